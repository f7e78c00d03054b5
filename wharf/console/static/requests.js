/* 请求日志 Requests page: the request log (GET /admin/api/requests) with its filters, keyset
   pages ("next page" hands next_cursor back) and CSV / JSON export links of the same filter.
   Which records a caller sees is the admin API's decision (an account: only its own; an
   admin: its own, one account's, or everyone's); this page only asks. */
"use strict";

const REQ_STATUSES = ["ok", "cancelled", "blocked", "error", "error:timeout", "error:overloaded", "error:invalid_param", "error:internal"];
const REQ_DIALECTS = ["openai", "qianfan", "welm", "sensenova"];

async function pageRequests(main) {
  const isAdmin = state.me.account.is_admin;
  const [accounts, creds, services, models] = await Promise.all([
    isAdmin ? admin("GET", "accounts") : Promise.resolve([]),
    admin("GET", "credentials" + (isAdmin ? "?all=true" : "")),
    admin("GET", "services" + (isAdmin ? "?all=true" : "")), loadModels()]);
  const any = (text) => h("option", { value: "" }, text || "全部 any");
  const sel = (id, options, first) => h("select", { id }, first === null ? null : any(first), options.map(([v, t]) => h("option", { value: v }, t)));
  const f = {
    account: isAdmin ? sel("req-account", accounts.map(a => [String(a.id), `${a.name} (#${a.id})`]), "全部账户 all accounts") : null,
    credential: sel("req-credential", creds.map(c => [String(c.id), `#${c.id} ${c.public_id}${c.label ? " · " + c.label : ""}`])),
    service: sel("req-service", services.map(s => [String(s.id), s.endpoint])),
    model: sel("req-model", models.map(m => [m, m])),
    dialect: sel("req-dialect", REQ_DIALECTS.map(d => [d, d])),
    // Free text with suggestions: any error:<kind> can be asked for; the API checks it.
    status: h("input", { id: "req-status", list: "req-status-list", placeholder: "ok / error / error:timeout …" }),
    since: h("input", { id: "req-since", type: "datetime-local" }),
    until: h("input", { id: "req-until", type: "datetime-local" }),
    id: h("input", { id: "req-id", placeholder: "chatcmpl-… / as-… / X-Request-Id" }),
    limit: h("input", { id: "req-limit", type: "number", min: 1, max: 1000, step: 1, value: 50 }),
  };
  const filters = () => ({
    ...(isAdmin ? (f.account.value ? { account_id: f.account.value } : { all: "true" }) : {}),
    credential_id: f.credential.value, service_id: f.service.value, model: f.model.value, dialect: f.dialect.value,
    status: f.status.value.trim(), since: localToISO(f.since.value), until: localToISO(f.until.value),
  });
  const err = h("p", { class: "error", id: "req-error" });
  const info = h("span", { class: "muted", id: "req-page-info" });
  const body = h("tbody", {});
  const csv = h("a", { class: "btn ghost small", id: "req-export-csv", download: "requests.csv" }, "导出 CSV");
  const json = h("a", { class: "btn ghost small", id: "req-export-json", download: "requests.json" }, "导出 JSON");
  const next = h("button", { class: "btn ghost", type: "button", id: "req-next", disabled: true }, "下一页 Next page");
  const first = h("button", { class: "btn ghost", type: "button", id: "req-first", disabled: true }, "第一页 First page");
  const accountName = Object.fromEntries(accounts.map(a => [a.id, a.name]));
  const serviceName = Object.fromEntries(services.map(s => [s.id, s.endpoint]));
  let cursor = null, pageNo = 1, applied = null;

  const row = (r) => h("tr", { "data-request": r.request_id },
    h("td", { "data-label": "时间" }, fmtTime(r.created_at)),
    h("td", { class: "mono", "data-label": "ID" }, r.request_id),
    isAdmin ? h("td", { "data-label": "账户" }, accountName[r.account_id] || `#${r.account_id}`) : null,
    h("td", { "data-label": "凭证" }, r.credential_id === null ? "—" : `#${r.credential_id}`),
    h("td", { "data-label": "服务" }, r.service_id === null ? "—" : (serviceName[r.service_id] || `#${r.service_id}`)),
    h("td", { "data-label": "接口" }, r.dialect), h("td", { "data-label": "模型" }, r.model),
    h("td", { class: "req-status", "data-label": "状态" }, h("span", { class: "tag" + (r.status === "ok" ? " ok" : (r.status.startsWith("error") || r.status === "blocked" ? " off" : "")) }, r.status)),
    h("td", { "data-label": "Tokens" }, `${r.prompt_tokens} + ${r.completion_tokens}`),
    h("td", { "data-label": "TTFT" }, r.ttft_ms === null ? "—" : `${r.ttft_ms} ms`),
    h("td", { "data-label": "耗时" }, r.latency_ms === null ? "—" : `${r.latency_ms} ms`));

  async function load(reset) {
    err.textContent = "";
    // A next page keeps the filter its cursor came from, whatever was typed since.
    if (reset) { cursor = null; pageNo = 1; applied = filters(); }
    const flt = applied;
    csv.href = "/console/api/admin/requests/export" + query({ ...flt, format: "csv" });
    json.href = "/console/api/admin/requests/export" + query({ ...flt, format: "json" });
    try {
      const id = f.id.value.trim();
      let rows, more = null;
      if (id) rows = [await admin("GET", "requests/" + encodeURIComponent(id))];
      else { const page = await admin("GET", "requests" + query({ ...flt, cursor, limit: f.limit.value || 50 })); rows = page.data; more = page.next_cursor; }
      body.replaceChildren(...rows.map(row));
      cursor = more;
      next.disabled = !more; first.disabled = pageNo === 1;
      info.textContent = rows.length ? `第 ${pageNo} 页 page ${pageNo} · ${rows.length} 条` : "没有记录 no records";
    } catch (e) { err.textContent = "查询失败 query refused: " + e.message; body.replaceChildren(); next.disabled = true; info.textContent = ""; }
  }
  next.addEventListener("click", () => { pageNo += 1; load(false); });
  first.addEventListener("click", () => load(true));

  const form = h("form", { class: "card", id: "req-form" }, h("h2", {}, "筛选 Filters"),
    h("div", { class: "grid" },
      f.account ? h("label", {}, "账户 Account", f.account) : null,
      h("label", {}, "凭证 Credential", f.credential), h("label", {}, "服务 Service", f.service),
      h("label", {}, "模型 Model", f.model), h("label", {}, "接口 Dialect", f.dialect),
      h("label", {}, "状态 Status", f.status, h("datalist", { id: "req-status-list" }, REQ_STATUSES.map(s => h("option", { value: s })))),
      h("label", {}, "起 Since", f.since), h("label", {}, "止 Until", f.until),
      h("label", {}, "请求 ID Request id", f.id), h("label", {}, "每页 Per page", f.limit),
      h("div", {}, h("button", { class: "btn", type: "submit", id: "req-apply" }, "查询 Search"))), err);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(true); });
  main.replaceChildren(h("h1", {}, "请求日志 Requests"),
    h("p", { class: "sub" }, "每个通过鉴权的请求一条记录（不含提示词与输出）。" + (isAdmin ? "管理员可查看全部账户。" : "只显示本账户的请求。") + " One record per request, newest first."),
    form,
    h("div", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "记录 Records"), info, csv, json),
      h("div", { class: "table-wrap" }, h("table", { id: "req-table", class: "cards" },
        h("thead", {}, h("tr", {}, h("th", {}, "时间"), h("th", {}, "ID"), isAdmin ? h("th", {}, "账户") : null, h("th", {}, "凭证"), h("th", {}, "服务"),
          h("th", {}, "接口"), h("th", {}, "模型"), h("th", {}, "状态"), h("th", {}, "Tokens"), h("th", {}, "TTFT"), h("th", {}, "耗时"))), body)),
      h("div", { class: "row" }, first, next)));
  await load(true);
}
PAGES.requests = pageRequests;
