/* 调用统计 Call statistics per service and day, for the usage page (Qianfan's 调用统计):
   requests, tokens, answered / cancelled / blocked, errors by kind, latency and TTFT
   p50 / p95, from GET /admin/api/stats/services. */
"use strict";

async function serviceStatsCard(all, days) {
  const stats = await admin("GET", "stats/services" + query({ days, all: all ? "true" : "" }));
  const ms = (v) => v === null ? "—" : `${v}`;
  const errors = (e) => Object.keys(e).length ? Object.entries(e).map(([k, n]) => `${k} ×${n}`).join(", ") : "0";
  const endpoints = [...new Set(stats.rows.map(r => r.endpoint || `#${r.service_id} (deleted)`))];
  const pick = h("select", { id: "svc-stats-service" }, h("option", { value: "" }, "全部服务 all services"),
    endpoints.map(e => h("option", { value: e }, e)));
  const body = h("tbody", {});
  const draw = () => body.replaceChildren(...stats.rows
    .map(r => ({ ...r, endpoint: r.endpoint || `#${r.service_id} (deleted)` }))
    .filter(r => !pick.value || r.endpoint === pick.value)
    .map(r => h("tr", { "data-service": r.endpoint, "data-day": r.day },
      h("td", { "data-label": "日期" }, r.day), h("td", { "data-label": "服务" }, h("b", {}, r.endpoint)),
      h("td", { class: "st-requests", "data-label": "请求" }, r.requests),
      h("td", { class: "st-outcomes", "data-label": "成功/取消/拦截" }, `${r.ok} / ${r.cancelled} / ${r.blocked}`),
      h("td", { class: "st-errors", "data-label": "错误" }, errors(r.errors)),
      h("td", { class: "st-tokens", "data-label": "Tokens" }, (r.prompt_tokens + r.completion_tokens).toLocaleString()),
      h("td", { class: "st-latency", "data-label": "耗时 p50/p95 ms" }, `${ms(r.latency_ms_p50)} / ${ms(r.latency_ms_p95)}`),
      h("td", { class: "st-ttft", "data-label": "TTFT p50/p95 ms" }, `${ms(r.ttft_ms_p50)} / ${ms(r.ttft_ms_p95)}`))));
  pick.addEventListener("change", draw);
  draw();
  return h("div", { class: "card", id: "svc-stats" },
    h("div", { class: "row" }, h("h2", {}, "调用统计 Calls per service"), stats.rows.length ? h("label", { class: "inline" }, "服务", pick) : null),
    stats.rows.length ? h("div", { class: "table-wrap" }, h("table", { id: "svc-stats-table", class: "cards" },
      h("thead", {}, h("tr", {}, h("th", {}, "日期 day"), h("th", {}, "服务 service"), h("th", {}, "请求 requests"),
        h("th", {}, "成功/取消/拦截 ok/cancelled/blocked"), h("th", {}, "错误 errors"), h("th", {}, "Tokens"),
        h("th", {}, "耗时 latency p50/p95 ms"), h("th", {}, "首字 TTFT p50/p95 ms"))), body))
      : h("p", { class: "muted", id: "svc-stats-empty" }, `最近 ${days} 天没有经由服务的调用。No calls through a service yet.`));
}
