/* 审计 Audit page: who changed what (GET /admin/api/audit), newest first, a page at a time.
   An admin sees every entry (or one account's); any other account only the entries about
   its own account's objects: the admin API decides, the page only asks. */
"use strict";

// "key: before → after" for each changed value (a create has no before, a delete no after;
// their empty columns are left out, so a new key reads as what was set on it).
function auditChanges(e) {
  const set = (obj) => Object.keys(obj || {}).filter(k => (e.before && e.after) || obj[k] !== null);
  const keys = [...new Set([...set(e.before), ...set(e.after)])];
  const show = (v) => v === undefined ? "∅" : JSON.stringify(v);
  return keys.map(k => h("div", { class: "mono change" }, `${k}: `,
    e.before ? show(e.before[k]) : "", e.before && e.after ? " → " : "", e.after ? show(e.after[k]) : ""));
}

async function pageAudit(main) {
  const isAdmin = state.me.account.is_admin;
  const accounts = await admin("GET", "accounts");       // an admin: every account; others: their own
  const names = Object.fromEntries(accounts.map(a => [a.id, a.name]));
  const account = isAdmin ? h("select", { id: "audit-account" }, h("option", { value: "" }, "全部账户 all accounts"),
    accounts.map(a => h("option", { value: String(a.id) }, `${a.name} (#${a.id})`))) : null;
  const type = h("select", { id: "audit-type" }, h("option", { value: "" }, "全部 any"),
    ["account", "credential", "service", "lexicon"].map(t => h("option", { value: t }, t)));
  const objectId = h("input", { id: "audit-object", type: "number", min: 1, placeholder: "ID" });
  const err = h("p", { class: "error", id: "audit-error" });
  const info = h("span", { class: "muted", id: "audit-page-info" });
  const body = h("tbody", {});
  const next = h("button", { class: "btn ghost", type: "button", id: "audit-next", disabled: true }, "下一页 Next page");
  const first = h("button", { class: "btn ghost", type: "button", id: "audit-first", disabled: true }, "第一页 First page");
  let cursor = null, pageNo = 1;
  const who = (e) => e.actor === "credential"
    ? `${names[e.actor_account_id] || "#" + e.actor_account_id} · 凭证 #${e.actor_credential_id}` : e.actor;

  async function load(reset) {
    err.textContent = "";
    if (reset) { cursor = null; pageNo = 1; }
    try {
      const page = await admin("GET", "audit" + query({ account_id: account ? account.value : "", object_type: type.value,
        object_id: objectId.value, cursor, limit: 50 }));
      body.replaceChildren(...page.data.map(e => h("tr", { "data-audit": e.id },
        h("td", { "data-label": "时间" }, fmtTime(e.created_at)),
        h("td", { class: "audit-actor", "data-label": "操作者" }, who(e)),
        h("td", { class: "mono", "data-label": "来源" }, e.source),
        h("td", { class: "audit-object", "data-label": "对象" }, `${e.object_type}${e.object_id === null ? "" : " #" + e.object_id}`),
        h("td", { "data-label": "账户" }, e.account_id === null ? "—" : (names[e.account_id] || `#${e.account_id}`)),
        h("td", { "data-label": "动作" }, h("span", { class: "tag" + (e.action === "delete" ? " off" : "") }, e.action)),
        h("td", { class: "audit-changes", "data-label": "变更" }, auditChanges(e)))));
      cursor = page.next_cursor;
      next.disabled = !cursor; first.disabled = pageNo === 1;
      info.textContent = page.data.length ? `第 ${pageNo} 页 page ${pageNo} · ${page.data.length} 条` : "没有记录 no entries";
    } catch (e) { err.textContent = "查询失败 query refused: " + e.message; body.replaceChildren(); next.disabled = true; info.textContent = ""; }
  }
  next.addEventListener("click", () => { pageNo += 1; load(false); });
  first.addEventListener("click", () => load(true));
  const form = h("form", { class: "card", id: "audit-form" }, h("div", { class: "grid" },
    account ? h("label", {}, "账户 Account", account) : null,
    h("label", {}, "对象类型 Object type", type), h("label", {}, "对象 ID Object id", objectId),
    h("div", {}, h("button", { class: "btn", type: "submit", id: "audit-apply" }, "查询 Search"))), err);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(true); });
  main.replaceChildren(h("h1", {}, "审计日志 Audit"),
    h("p", { class: "sub" }, "账户、限额、凭证、服务与词库的每次变更：谁、何时、改了什么（不含密钥）。" +
      (isAdmin ? "" : "只显示本账户对象的变更。") + " Every change, who made it, before and after."),
    form,
    h("div", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "记录 Entries"), info),
      h("div", { class: "table-wrap" }, h("table", { id: "audit-table", class: "cards" },
        h("thead", {}, h("tr", {}, h("th", {}, "时间"), h("th", {}, "操作者"), h("th", {}, "来源"), h("th", {}, "对象"), h("th", {}, "账户"),
          h("th", {}, "动作"), h("th", {}, "变更 Changes"))), body)),
      h("div", { class: "row" }, first, next)));
  await load(true);
}
PAGES.audit = pageAudit;
