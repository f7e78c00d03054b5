/* 账户 Accounts page, for admins: create accounts, disable / enable them, set their limits
   and daily quotas, see each one's usage (today and the last 30 days). A non-admin never
   gets the nav entry, and the admin API refuses it (403) whatever it sends. */
"use strict";

// [field, label]: every limit an admin sets on an account (AccountLimits in wharf/api/admin.py).
const ACCOUNT_LIMITS = [
  ["quota_chars_per_day", "每日字符配额 chars/day"], ["quota_tokens_per_day", "每日 token 配额 tokens/day"],
  ["rpm", "RPM"], ["tpm", "TPM"], ["qps", "QPS"], ["max_concurrency", "并发 concurrency"],
  ["key_rpm", "凭证 RPM 上限 key ceiling"], ["key_tpm", "凭证 TPM 上限"], ["key_qps", "凭证 QPS 上限"],
  ["key_max_concurrency", "凭证并发上限"], ["service_rpm", "服务 RPM 上限 service ceiling"], ["service_tpm", "服务 TPM 上限"]];

// Inputs for the limits; empty means null (the platform default, or no limit without one).
function limitInputs(prefix, values) {
  const inputs = Object.fromEntries(ACCOUNT_LIMITS.map(([k]) => [k, h("input", { id: `${prefix}-${k}`, "data-limit": k, type: "number",
    min: 0, step: 1, placeholder: "不限 / 默认", value: values && values[k] !== null && values[k] !== undefined ? values[k] : "" })]));
  const grid = h("div", { class: "grid" }, ACCOUNT_LIMITS.map(([k, label]) => h("label", {}, label, inputs[k])));
  grid.clear = () => Object.values(inputs).forEach(i => { i.value = ""; });
  grid.read = () => Object.fromEntries(ACCOUNT_LIMITS.map(([k]) => [k, inputs[k].value === "" ? null : Number(inputs[k].value)]));
  return grid;
}

async function pageAccounts(main) {
  if (!state.me.account.is_admin) {     // the API would refuse anyway; say so plainly
    main.replaceChildren(h("h1", {}, "账户 Accounts"), h("p", { class: "error", id: "accounts-denied" }, "仅管理员可用 admins only"));
    return;
  }
  const err = h("p", { class: "error", id: "acct-error" });
  const panel = h("div", { id: "acct-panel" });
  const body = h("tbody", {});
  const name = h("input", { id: "acct-name", maxlength: 64, required: true, placeholder: "例如 team-a" });
  const isAdmin = h("input", { id: "acct-admin", type: "checkbox" });
  const limits = limitInputs("new", null);
  const form = h("form", { class: "card", id: "acct-form" }, h("h2", {}, "创建账户 Create account"),
    h("div", { class: "grid" }, h("label", {}, "名称 Name", name), h("label", { class: "inline" }, isAdmin, "管理员 admin"),
      h("div", {}, h("button", { class: "btn", type: "submit", id: "acct-create" }, "创建 Create"))),
    h("h2", { class: "hint" }, "限额与配额 Limits and quotas (空 = 默认/不限)"), limits, err);

  async function draw() {
    const [accounts, today, month] = await Promise.all([admin("GET", "accounts"),
      admin("GET", "usage?all=true&group_by=account&days=1"), admin("GET", "usage?all=true&group_by=account&days=30")]);
    const by = (rows) => Object.fromEntries(rows.map(r => [r.key, r]));
    const t = by(today.rows), m = by(month.rows);
    const used = (r) => r ? `${r.requests} 次 · ${(r.prompt_tokens + r.completion_tokens).toLocaleString()} tokens` : "—";
    const lim = (v) => v === null || v === undefined ? "—" : v.toLocaleString();
    body.replaceChildren(...accounts.map(a => h("tr", { "data-account": a.id, "data-name": a.name },
      h("td", {}, h("b", {}, a.name), " ", a.is_admin ? h("span", { class: "tag" }, "admin") : null, h("div", { class: "muted" }, `#${a.id}`)),
      h("td", { class: "acct-status", "data-label": "状态" }, h("span", { class: "tag " + (a.status === "active" ? "ok" : "off") }, a.status)),
      h("td", { class: "acct-quota", "data-label": "配额" }, `字符 ${lim(a.quota_chars_per_day)} / tokens ${lim(a.quota_tokens_per_day)}`),
      h("td", { class: "acct-limits", "data-label": "限额" }, `RPM ${lim(a.rpm)} · TPM ${lim(a.tpm)} · QPS ${lim(a.qps)} · 并发 ${lim(a.max_concurrency)}`),
      h("td", { class: "acct-today", "data-label": "今日" }, used(t[String(a.id)])),
      h("td", { class: "acct-month", "data-label": "30 天" }, used(m[String(a.id)])),
      h("td", {}, h("div", { class: "row" },
        h("button", { class: "btn ghost small", type: "button", "data-edit": a.id, onclick: () => editPanel(a) }, "限额 Limits"),
        a.id === state.me.account.id ? h("span", { class: "tag ok" }, "当前 you") :
          h("button", { class: "btn small " + (a.status === "active" ? "danger" : "ghost"), type: "button", "data-toggle": a.id, onclick: async () => {
            try { await admin("POST", `accounts/${a.id}/${a.status === "active" ? "disable" : "enable"}`); await draw(); toast("已更新 / updated"); }
            catch (e) { toast(e.message); }
          } }, a.status === "active" ? "停用 Disable" : "启用 Enable"))))));
  }

  function editPanel(a) {
    const inputs = limitInputs("edit", a);
    const perr = h("p", { class: "error", id: "acct-panel-error" });
    const f = h("form", { class: "secret panel", id: "acct-edit-form" }, h("p", {}, h("b", {}, `限额与配额 ${a.name} (#${a.id})`)), inputs,
      h("div", { class: "row" }, h("button", { class: "btn", type: "submit", id: "acct-save" }, "保存 Save"),
        h("button", { class: "btn ghost", type: "button", onclick: () => panel.replaceChildren() }, "取消 Cancel")), perr);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault(); perr.textContent = "";
      try { await admin("PATCH", `accounts/${a.id}`, inputs.read()); panel.replaceChildren(); await draw(); toast("已保存 / saved"); }
      catch (e) { perr.textContent = e.message; }
    });
    panel.replaceChildren(f);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = "";
    // Only the limits typed in: an empty one is left to the platform default.
    const set = Object.fromEntries(Object.entries(limits.read()).filter(([, v]) => v !== null));
    try {
      await admin("POST", "accounts", { name: name.value.trim(), is_admin: isAdmin.checked, ...set });
      name.value = ""; isAdmin.checked = false; limits.clear(); await draw(); toast("账户已创建 / account created");
    } catch (e) { err.textContent = "创建失败 refused: " + e.message; }
  });
  await draw();
  main.replaceChildren(h("h1", {}, "账户 Accounts"), h("p", { class: "sub" }, "管理员：创建、停用/启用账户，设置限额与每日配额，查看用量。Admins only."),
    form,
    h("div", { class: "card" }, h("h2", {}, "账户列表 Accounts"), panel, h("div", { class: "table-wrap" }, h("table", { id: "acct-table", class: "cards" },
      h("thead", {}, h("tr", {}, h("th", {}, "账户"), h("th", {}, "状态"), h("th", {}, "每日配额 quota/day"), h("th", {}, "限额 limits"),
        h("th", {}, "今日用量 today"), h("th", {}, "30 天用量 30 days"), h("th", {}, ""))), body))));
}
PAGES.accounts = pageAccounts;
