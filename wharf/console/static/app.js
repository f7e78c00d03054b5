/* Wharf console: vanilla JS, no dependencies. Every string from the server goes into the
   DOM through textContent (h() below), never through innerHTML. */
"use strict";

const ORIGIN = location.origin;
const state = { me: null, csrf: "", models: [], services: [], credentials: [], poll: null };

// -- tiny DOM helper --------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const svg = ["svg", "rect", "text", "line", "g", "title", "path", "polyline"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel, root) => (root || document).querySelector(sel);
function toast(msg) {
  const t = $("#toast"); t.textContent = msg; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.hidden = true), 2500);
}
function fmtTime(s) { if (!s) return "—"; const d = new Date(s.endsWith("Z") || s.includes("+") ? s : s + "Z"); return d.toLocaleString("zh-CN", { hour12: false }); }
// datetime-local inputs hold the browser's local time; the admin API takes ISO times with a zone.
function localToISO(v) { return v ? new Date(v).toISOString() : ""; }
function isoToLocal(s) {
  if (!s) return "";
  const d = new Date(s.endsWith("Z") || s.includes("+") ? s : s + "Z");
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}
// "?a=1&b=2" of the parameters that are set ("" / null / undefined are left out).
function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? "?" + text : "";
}
async function copy(text) {
  try { await navigator.clipboard.writeText(text); toast("已复制 / copied"); }
  catch (e) {
    const ta = h("textarea", {}, text); document.body.append(ta); ta.select();
    document.execCommand("copy"); ta.remove(); toast("已复制 / copied");
  }
}

// -- API ----------------------------------------------------------------------------------
async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  if (r.status === 401 && path !== "/console/session") { showLogin("会话已失效，请重新登录 (session expired)"); throw new Error("not signed in"); }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}
const admin = (method, path, body) => api(method, "/console/api/admin/" + path, body);

// -- shell / routing ------------------------------------------------------------------------
async function boot() {
  $("#sign-out").addEventListener("click", async () => {
    await api("DELETE", "/console/session").catch(() => {});
    state.me = null; showLogin();
  });
  window.addEventListener("hashchange", route);
  const s = await fetch("/console/session", { credentials: "same-origin" }).then(r => r.json());
  if (s.signed_in) { signedIn(s); route(); } else showLogin();
}

function signedIn(s) {
  state.me = s; state.csrf = s.csrf;
  $("#nav").hidden = false; $("#who").hidden = false;
  $("#who-name").textContent = s.account.name + (s.account.is_admin ? " (admin)" : "");
  // Only a cue: the admin API refuses a non-admin whatever the page shows.
  document.querySelectorAll("#nav a[data-admin]").forEach(a => { a.hidden = !s.account.is_admin; });
}

function showLogin(msg) {
  stopPoll();
  $("#nav").hidden = true; $("#who").hidden = true;
  const err = h("p", { class: "error", id: "login-error" }, msg || "");
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "wk-…" });
  const form = h("form", { class: "card login", id: "login-form" },
    h("h1", {}, "登录 Wharf 控制台"),
    h("p", { class: "sub" }, "使用账户的 API Key 登录（管理员可查看全部账户）。Sign in with an account API key."),
    h("label", {}, "API Key", key), h("div", { class: "row", style: null }, h("button", { class: "btn", type: "submit", id: "sign-in" }, "登录 Sign in")), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = "";
    try {
      const s = await api("POST", "/console/session", { api_key: key.value.trim() });
      signedIn(s); key.value = "";
      if (!location.hash || location.hash === "#/") location.hash = "#/services"; else route();
    } catch (e) { err.textContent = "登录失败：" + e.message; }
  });
  $("#main").replaceChildren(form);
  key.focus();
}

// The pages in their own files (credentials.js, requests.js, audit.js, accounts.js) add themselves.
const PAGES = { services: pageServices, usage: pageUsage, playground: pagePlayground, models: pageModels };
async function route() {
  if (!state.me) return;
  stopPoll();
  const name = (location.hash.replace(/^#\/?/, "").split("?")[0]) || "services";
  const page = PAGES[name] || pageServices;
  document.querySelectorAll("#nav a").forEach(a => a.classList.toggle("active", a.dataset.page === name));
  const main = $("#main"); main.replaceChildren(h("p", { class: "muted" }, "加载中…"));
  try { await page(main); } catch (e) { if (state.me) main.replaceChildren(h("p", { class: "error" }, "出错了：" + e.message)); }
}
function stopPoll() { if (state.poll) { clearInterval(state.poll); state.poll = null; } }

async function loadModels() { state.models = await admin("GET", "models"); return state.models; }
async function loadServices() {
  state.services = await admin("GET", "services" + (state.me.account.is_admin ? "?all=true" : ""));
  return state.services;
}
async function loadCredentials() { state.credentials = await admin("GET", "credentials"); return state.credentials; }
const serviceURL = (s) => `${ORIGIN}/rpc/2.0/ai_custom/v1/wenxinworkshop/${s.kind}/${s.endpoint}`;

// -- 在线服务-服务配置 ------------------------------------------------------------------------
async function pageServices(main) {
  const [models] = await Promise.all([loadModels(), loadServices()]);
  const err = h("p", { class: "error" });
  // What the user types is Qianfan's urlSuffix; the server puts a random tag before it.
  const endpoint = h("input", { id: "svc-endpoint", placeholder: "例如 test1", maxlength: 20, required: true });
  const model = h("select", { id: "svc-model" }, models.map(m => h("option", { value: m }, m)));
  const kind = h("select", { id: "svc-kind" }, h("option", { value: "chat" }, "chat 对话"), h("option", { value: "completions" }, "completions 续写"));
  const desc = h("input", { id: "svc-desc", maxlength: 1024, placeholder: "可选 optional" });
  const preview = h("code", { id: "svc-url-preview" });
  const upd = () => { preview.textContent = serviceURL({ kind: kind.value, endpoint: "{前缀}_" + (endpoint.value || "{API地址}") }); };
  endpoint.addEventListener("input", upd); kind.addEventListener("change", upd); upd();
  const form = h("form", { class: "card", id: "svc-form" },
    h("h2", {}, "创建服务 Create service"),
    h("div", { class: "grid" },
      h("label", {}, "API地址 (endpoint)", endpoint), h("label", {}, "模型 Model", model),
      h("label", {}, "类型 Kind", kind), h("label", {}, "描述 Description", desc),
      h("div", {}, h("button", { class: "btn", type: "submit", id: "svc-create" }, "创建 Create"))),
    h("p", { class: "hint" }, "调用地址 URL: ", preview),
    h("p", { class: "hint" }, "API地址会自动加上随机前缀，例如 test1 → lbwxxxd4_test1。A random prefix is added to the address you type."), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = "";
    try {
      await admin("POST", "services", { endpoint: endpoint.value.trim(), model: model.value, kind: kind.value, description: desc.value });
      toast("服务已创建 / service created"); route();
    } catch (e) { err.textContent = e.message; }
  });
  const rows = state.services.map(s => h("tr", { "data-endpoint": s.endpoint },
    h("td", {}, h("b", {}, s.endpoint), h("div", { class: "muted svc-desc" }, s.description || "")),
    h("td", { "data-label": "模型" }, s.model), h("td", { "data-label": "类型" }, h("span", { class: "tag" }, s.kind)),
    h("td", { class: "url", "data-label": "URL" }, serviceURL(s), " ", h("button", { class: "btn ghost small", type: "button", onclick: () => copy(serviceURL(s)) }, "复制")),
    state.me.account.is_admin ? h("td", { class: "hide-sm" }, String(s.account_id)) : null,
    h("td", {}, h("button", { class: "btn danger small", type: "button", "data-delete": s.id, onclick: async () => {
      if (!confirm(`删除服务 ${s.endpoint}？`)) return;
      try { await admin("DELETE", "services/" + s.id); toast("已删除 / deleted"); route(); } catch (e) { toast(e.message); }
    } }, "删除"))));
  main.replaceChildren(
    h("h1", {}, "在线服务 · 服务配置"), h("p", { class: "sub" }, "千帆自定义服务：API地址 + 模型 + 类型。Qianfan custom services."),
    form,
    h("div", { class: "card" }, h("h2", {}, `服务列表 Services (${rows.length})`),
      rows.length ? h("div", { class: "table-wrap" }, h("table", { id: "svc-table", class: "cards" },
        h("thead", {}, h("tr", {}, h("th", {}, "API地址"), h("th", {}, "模型"), h("th", {}, "类型"), h("th", {}, "调用地址 URL"),
          state.me.account.is_admin ? h("th", { class: "hide-sm" }, "账户") : null, h("th", {}, ""))),
        h("tbody", {}, rows))) : h("p", { class: "muted", id: "svc-empty" }, "还没有服务。No services yet.")));
}

// -- 凭证 Credentials ---------------------------------------------------------------------------
const KINDS = { api_key: "API Key (OpenAI / WeLM)", qianfan_app: "千帆应用 API Key + Secret Key", qianfan_iam: "千帆 IAM AK/SK", sensenova: "SenseNova AK/SK" };
function secretBox(issued) {
  const pairs = Object.entries({ api_key: "API Key", secret_key: "Secret Key", access_key: "Access Key",
    access_key_id: "Access Key ID", secret_access_key: "Secret Access Key" })
    .filter(([k]) => issued[k] && !(issued.credential.kind === "api_key" && k === "key_prefix"));
  return h("div", { class: "secret", id: "new-secret" },
    h("p", {}, h("b", {}, "请立即保存：密钥只显示这一次。"), " Save it now: the secret is shown once."),
    h("div", { class: "kv" }, pairs.map(([k, label]) => [h("span", { class: "k muted" }, label),
      h("code", { class: "mono", "data-field": k }, issued[k]),
      h("button", { class: "btn ghost small", type: "button", "data-copy": k, onclick: () => copy(issued[k]) }, "复制 Copy")])));
}
// -- 用量 Usage -------------------------------------------------------------------------------
function days30(since, until) {
  const out = []; const d = new Date(since + "T00:00:00Z"); const end = new Date(until + "T00:00:00Z");
  while (d <= end) { out.push(d.toISOString().slice(0, 10)); d.setUTCDate(d.getUTCDate() + 1); }
  return out;
}
function stackedChart(days, series, metric, id) {
  const keys = [...new Set(series.map(r => r.key))];
  const W = Math.round(Math.max(340, Math.min(900, ($("#main").clientWidth || 900) - 60))), H = W < 600 ? 180 : 210, L = 44, B = 22, T = 8, R = 6;
  const totals = Object.fromEntries(days.map(d => [d, 0]));
  for (const r of series) if (r.day in totals) totals[r.day] += r[metric];
  const raw = Math.max(1, ...Object.values(totals));
  let step = 1;
  if (raw > 4) { const mag = Math.pow(10, Math.floor(Math.log10(raw / 4))); step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(v => v * 4 >= raw); step = Math.max(1, Math.ceil(step)); }
  const max = step * 4;
  const bw = (W - L - R) / days.length;
  const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id, role: "img", "aria-label": metric });
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (1 - i / 4);
    svg.append(h("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e3e7ef" }),
      h("text", { x: L - 6, y: y + 3, "text-anchor": "end" }, Math.round(max * i / 4).toLocaleString()));
  }
  days.forEach((d, i) => {
    let y = H - B; const x = L + i * bw + 1.5;
    keys.forEach((k, ki) => {
      const row = series.find(r => r.day === d && r.key === k); if (!row || !row[metric]) return;
      const hgt = (H - T - B) * row[metric] / max; y -= hgt;
      svg.append(h("rect", { x, y, width: Math.max(1, bw - 3), height: hgt, class: "sw" + (ki % 6), "data-day": d, "data-key": k, "data-value": row[metric] },
        h("title", {}, `${d} ${k}: ${row[metric]}`)));
    });
    if (i % 5 === 0 || i === days.length - 1) svg.append(h("text", { x: L + i * bw + bw / 2, y: H - 6, "text-anchor": "middle" }, d.slice(5)));
  });
  const legend = h("div", { class: "legend" }, keys.map((k, ki) => h("span", {}, h("i", { class: "sw" + (ki % 6) }), k)));
  return h("div", {}, svg, legend);
}
async function pageUsage(main) {
  const all = state.me.account.is_admin;
  const [series, byModel, byService, quota, perService] = await Promise.all([
    api("GET", "/console/api/usage-series?days=30" + (all ? "&all=true" : "")),
    admin("GET", "usage?days=30&group_by=model" + (all ? "&all=true" : "")),
    admin("GET", "usage?days=30&group_by=service" + (all ? "&all=true" : "")),
    admin("GET", "quota"), serviceStatsCard(all, 30)]);
  const days = days30(series.since, series.until);
  let group = "model";
  const charts = h("div", { id: "charts" });
  const draw = () => charts.replaceChildren(
    ...[["requests", "请求数 Requests"], ["tokens", "Tokens (prompt + completion)"], ["chars", "生成字符 Characters"]].map(([m, t]) =>
      h("div", { class: "card" }, h("h2", {}, t), stackedChart(days, series[group], m, "chart-" + m))));
  const tabs = h("div", { class: "tabs" }, ["model", "service"].map(g => h("button", { type: "button", class: g === group ? "active" : "", "data-group": g,
    onclick: (ev) => { group = g; tabs.querySelectorAll("button").forEach(b => b.classList.toggle("active", b === ev.target)); draw(); } },
    g === "model" ? "按模型 per model" : "按服务 per service")));
  draw();
  const total = byModel.rows.reduce((a, r) => ({ requests: a.requests + r.requests, tokens: a.tokens + r.prompt_tokens + r.completion_tokens, chars: a.chars + r.generated_chars, errors: a.errors + r.errors }), { requests: 0, tokens: 0, chars: 0, errors: 0 });
  const meter = (used, reserved, limit) => {
    if (limit === null || limit === undefined) return h("span", { class: "muted" }, `${used.toLocaleString()} 已用 / 不限 unlimited`);
    const bar = h("span"); bar.style.width = Math.min(100, 100 * (used + reserved) / Math.max(1, limit)) + "%";
    return h("div", {}, h("div", {}, `${used.toLocaleString()} / ${limit.toLocaleString()}` + (reserved ? ` (+${reserved} 预留)` : "")), h("div", { class: "meter" }, bar));
  };
  const table = (rows, title, id) => h("div", { class: "card" }, h("h2", {}, title), h("div", { class: "table-wrap" }, h("table", { id },
    h("thead", {}, h("tr", {}, h("th", {}, "名称"), h("th", {}, "请求"), h("th", {}, "Prompt tokens"), h("th", {}, "Completion tokens"), h("th", {}, "字符"), h("th", {}, "错误"))),
    h("tbody", {}, rows.map(r => h("tr", {}, h("td", {}, r.key === "-" ? "（无服务 no service）" : r.key), h("td", { class: "n-requests" }, r.requests), h("td", {}, r.prompt_tokens), h("td", {}, r.completion_tokens), h("td", {}, r.generated_chars), h("td", {}, r.errors)))))));
  main.replaceChildren(h("h1", {}, "用量 Usage"), h("p", { class: "sub" }, `最近 30 天 ${series.since} — ${series.until}` + (all ? "（全部账户 all accounts）" : "")),
    h("div", { class: "card" }, h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", { id: "total-requests" }, total.requests), h("span", {}, "请求 requests")),
      h("div", { class: "stat" }, h("b", { id: "total-tokens" }, total.tokens.toLocaleString()), h("span", {}, "tokens")),
      h("div", { class: "stat" }, h("b", {}, total.chars.toLocaleString()), h("span", {}, "生成字符 chars")),
      h("div", { class: "stat" }, h("b", {}, total.errors), h("span", {}, "错误 errors")))),
    h("div", { class: "card", id: "quota" }, h("h2", {}, `今日配额 Quota (${quota.day})`), h("div", { class: "grid2" },
      h("div", {}, h("p", { class: "muted" }, "字符 characters"), meter(quota.chars_used, quota.chars_reserved, quota.chars_limit)),
      h("div", {}, h("p", { class: "muted" }, "Tokens"), meter(quota.tokens_used, quota.tokens_reserved, quota.tokens_limit)))),
    tabs, charts,
    h("div", { class: "grid2" }, table(byModel.rows, "按模型 by model", "usage-by-model"), table(byService.rows, "按服务 by service", "usage-by-service")),
    perService);
}

// -- 模型 Models --------------------------------------------------------------------------------
async function pageModels(main) {
  const body = h("tbody", {});
  const fmt = (v) => typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(1)) : (v === null || v === undefined ? "—" : String(v));
  // The upstream backend's replicas: "url up|down in_flight/requests/failures" each.
  const fmtMetric = (k, v) => k === "upstreams" && Array.isArray(v)
    ? `upstreams=${v.map((u) => `${u.url} ${u.healthy ? "up" : "down"} ${u.in_flight}/${u.requests}/${u.failures}`).join(", ")}`
    : `${k}=${fmt(v)}`;
  const refresh = async () => {
    const stats = await api("GET", "/console/api/engine");
    body.replaceChildren(...Object.entries(stats).map(([name, s]) => h("tr", { "data-model": name },
      h("td", {}, h("b", {}, name)), h("td", {}, fmt(s.context_length)), h("td", {}, fmt(s.backend)),
      h("td", { class: "mono hide-sm" }, fmt(s.identity)),
      h("td", {}, fmt(s.waiting)), h("td", {}, fmt(s.running)),
      h("td", {}, fmt(s.tokens_per_second ?? s.tokens_per_s)),
      h("td", { class: "mono hide-sm" }, Object.entries(s).filter(([k]) => !["context_length", "backend", "identity", "waiting", "running", "tokens_per_second"].includes(k)).map(([k, v]) => fmtMetric(k, v)).join("  ")))));
    $("#stats-time") && ($("#stats-time").textContent = new Date().toLocaleTimeString("zh-CN", { hour12: false }));
  };
  main.replaceChildren(h("h1", {}, "模型 Models"), h("p", { class: "sub" }, "已加载模型与实时引擎状态（每 2 秒刷新）。 Updated ", h("span", { id: "stats-time" }, "…")),
    h("div", { class: "card" }, h("div", { class: "table-wrap" }, h("table", { id: "models-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "模型"), h("th", {}, "上下文 ctx"), h("th", {}, "后端"), h("th", { class: "hide-sm" }, "identity"), h("th", {}, "排队 queue"), h("th", {}, "运行 batch"), h("th", {}, "tok/s"), h("th", { class: "hide-sm" }, "全部指标"))), body))));
  await refresh();
  state.poll = setInterval(() => refresh().catch(() => {}), 2000);
}

// -- 调试平台 Playground ------------------------------------------------------------------------
const DIALECTS = {
  "qianfan-chat": { label: "千帆 Qianfan · chat", cred: "qianfan_app", target: "service", kind: "chat", stream: true,
    params: [["temperature", 0.8, "(0, 1]", 0.01, 1, 0.01], ["top_p", 0.8, "[0, 1]", 0, 1, 0.01], ["penalty_score", 1.0, "[1, 2]", 1, 2, 0.01], ["max_output_tokens", 32, "≥ 2", 2, 2048, 1]] },
  "qianfan-completions": { label: "千帆 Qianfan · completions", cred: "qianfan_app", target: "service", kind: "completions", stream: true,
    params: [["temperature", 0.8, "(0, 1]", 0.01, 1, 0.01], ["top_p", 0.8, "[0, 1]", 0, 1, 0.01], ["penalty_score", 1.0, "[1, 2]", 1, 2, 0.01], ["max_output_tokens", 32, "≥ 2", 2, 2048, 1]] },
  "welm": { label: "WeLM · completions", cred: "api_key", target: "model", stream: false,
    params: [["max_tokens", 32, "1..1024", 1, 1024, 1], ["temperature", 0.85, "0..2", 0, 2, 0.01], ["top_p", 0.95, "[0, 1]", 0, 1, 0.01], ["top_k", 50, "≥ 0", 0, 1000, 1], ["n", 1, "1..12", 1, 12, 1], ["stop", "", "stop chars", null, null, null]] },
  "sensenova": { label: "SenseNova · completions", cred: "sensenova", target: "model", stream: true,
    params: [["max_new_tokens", 32, "1..2048", 1, 2048, 1], ["n", 1, "1..4", 1, 4, 1], ["repetition_penalty", 1.05, "(0, 2]", 0.01, 2, 0.01], ["temperature", 0.8, "(0, 2]", 0.01, 2, 0.01], ["top_p", 0.7, "(0, 1)", 0.01, 0.99, 0.01]] },
  "openai-chat": { label: "OpenAI · chat.completions", cred: "api_key", target: "model", stream: true,
    params: [["max_tokens", 32, "≥ 1", 1, 4096, 1], ["temperature", 1.0, "0..2", 0, 2, 0.01], ["top_p", 1.0, "[0, 1]", 0, 1, 0.01], ["n", 1, "1..", 1, 8, 1], ["presence_penalty", 0, "-2..2", -2, 2, 0.1], ["frequency_penalty", 0, "-2..2", -2, 2, 0.1], ["seed", "", "int", null, null, 1]] },
  "openai-completions": { label: "OpenAI · completions", cred: "api_key", target: "model", stream: true,
    params: [["max_tokens", 32, "≥ 1", 1, 4096, 1], ["temperature", 1.0, "0..2", 0, 2, 0.01], ["top_p", 1.0, "[0, 1]", 0, 1, 0.01], ["n", 1, "1..", 1, 8, 1], ["seed", "", "int", null, null, 1]] },
};
function extractText(d, obj) {
  try {
    if (d.startsWith("openai")) return (obj.choices || []).map(c => (c.delta && c.delta.content) || c.text || (c.message && c.message.content) || "").join("");
    if (d.startsWith("qianfan")) return obj.result || "";
    if (d === "welm") return (obj.choices || []).map(c => c.text).join("\n---\n");
    if (d.startsWith("sensenova")) return ((obj.data && obj.data.choices) || []).map(c => c.delta || c.text || (c.message) || "").join("");
  } catch (e) { return ""; }
  return "";
}

async function pagePlayground(main) {
  await Promise.all([loadModels(), loadServices(), loadCredentials()]);
  const myServices = () => state.services.filter(s => s.account_id === state.me.account.id);
  const dialect = h("select", { id: "pg-dialect" }, Object.entries(DIALECTS).map(([k, v]) => h("option", { value: k }, v.label)));
  const target = h("select", { id: "pg-target" });
  const credSel = h("select", { id: "pg-cred" });
  const credWrap = h("label", {}, "凭证 Credential", credSel);
  const prompt = h("textarea", { id: "pg-prompt", rows: 3 }, "你好，请用一句话介绍你自己。");
  const streamBox = h("input", { type: "checkbox", id: "pg-stream", checked: true });
  const paramsBox = h("div", { class: "grid", id: "pg-params" });
  const sendBtn = h("button", { class: "btn", type: "submit", id: "pg-send" }, "发送 Send");
  const fillBtn = h("button", { class: "btn ghost", type: "button", id: "pg-fill" }, "用新凭证填充示例代码 Fill code with a new credential");
  const output = h("pre", { class: "output", id: "pg-output" });
  const reqPre = h("pre", { id: "pg-request" }), rawPre = h("pre", { id: "pg-raw" });
  // One <pre> per language (samples.js); a dialect shows those it has samples in.
  const codePres = Object.fromEntries(Object.keys(SAMPLE_LANGS).map(l => [l, h("pre", { id: "pg-code-" + l, "data-lang": l })]));
  const status = h("span", { class: "muted", id: "pg-status" });
  const err = h("p", { class: "error", id: "pg-error" });
  const codeTabs = h("div", { class: "tabs", id: "pg-code-tabs" });
  let shown = "python";
  function showCode(which) {
    shown = which;
    codeTabs.querySelectorAll("button[data-code]").forEach(b => b.classList.toggle("active", b.dataset.code === which));
    for (const [lang, pre] of Object.entries(codePres)) pre.hidden = lang !== which;
  }
  codeTabs.append(...Object.entries(SAMPLE_LANGS).map(([lang, label]) =>
    h("button", { type: "button", "data-code": lang, onclick: () => showCode(lang) }, label)),
    h("button", { type: "button", id: "pg-copy", onclick: () => copy(codePres[shown].textContent) }, "复制代码 Copy"));
  let filled = null; // {kind, key | ak, sk}

  const cur = () => DIALECTS[dialect.value];
  function fillTargets() {
    const d = cur();
    if (d.target === "service") {
      const list = myServices().filter(s => s.kind === d.kind);
      target.replaceChildren(...(list.length ? list.map(s => h("option", { value: s.endpoint }, `${s.endpoint} (${s.model})`)) : [h("option", { value: "" }, `先创建一个 ${d.kind} 服务 (create a ${d.kind} service first)`)]));
    } else target.replaceChildren(...state.models.map(m => h("option", { value: m }, m)));
    fillCreds();
    paramsBox.replaceChildren(...d.params.map(([name, def, range, min, max, step]) => h("label", {}, `${name} ${range}`,
      h("input", { "data-param": name, type: step === null ? "text" : "number", value: def, min: min ?? null, max: max ?? null, step: step ?? null }))));
    streamBox.disabled = !d.stream; streamBox.checked = d.stream;
    filled = filled && filled.kind === d.cred ? filled : null;
    render();
  }
  function fillCreds() {
    const d = cur();
    if (d.cred === "api_key") { credWrap.hidden = true; }
    else {
      credWrap.hidden = false;
      const list = state.credentials.filter(c => c.kind === d.cred && !c.revoked_at);
      credSel.replaceChildren(...(list.length ? list.slice().reverse().map(c => h("option", { value: c.id }, `${c.public_id}${c.label ? " · " + c.label : ""}`)) : [h("option", { value: "" }, "（无，点击下方按钮创建）none yet")]));
    }
  }
  function buildRequest() {
    const dn = dialect.value, d = cur(), text = prompt.value;
    const body = {};
    let path;
    if (d.target === "model") body.model = target.value;
    if (dn === "openai-chat") body.messages = [{ role: "user", content: text }];
    else if (dn === "qianfan-chat") body.messages = [{ role: "user", content: text }];
    else body.prompt = text;
    for (const inp of paramsBox.querySelectorAll("input")) {
      const name = inp.dataset.param; if (inp.value === "") continue;
      body[name] = inp.type === "number" ? Number(inp.value) : inp.value;
    }
    if (d.stream && streamBox.checked) body.stream = true;
    if (dn.startsWith("openai")) path = dn === "openai-chat" ? "/v1/chat/completions" : "/v1/completions";
    else if (dn === "welm") path = "/welm/v1/completions";
    else if (dn === "sensenova") path = "/v1/llm/completions";
    else path = `/rpc/2.0/ai_custom/v1/wenxinworkshop/${d.kind}/${target.value}`;
    return { path, body };
  }
  function credForCode() {
    const d = cur();
    if (filled && filled.kind === d.cred) return { ...filled, filled: true };
    return { ...PLACEHOLDER[d.cred], filled: false };
  }
  function render() {
    const { path, body } = buildRequest(); const d = cur();
    const headers = ["Content-Type: application/json"];
    let url = ORIGIN + path;
    if (d.cred === "api_key") headers.push("Authorization: Bearer wk-****************（会话的 API Key, masked）");
    else if (d.cred === "sensenova") headers.push("Authorization: Bearer eyJhbGciOiJIUzI1NiIs****（HS256 JWT, masked）");
    else url += "?access_token=****（OAuth access_token, masked）";
    reqPre.textContent = `POST ${url}\n${headers.join("\n")}\n\n${JSON.stringify(body, null, 2)}`;
    const code = sampleCode(ORIGIN, dialect.value, path, body, credForCode());
    for (const [lang, pre] of Object.entries(codePres)) pre.textContent = code[lang] || "";
    codeTabs.querySelectorAll("button[data-code]").forEach(b => { b.hidden = !code[b.dataset.code]; });
    if (!code[shown]) showCode("python");
  }
  fillBtn.addEventListener("click", async () => {
    const d = cur(); err.textContent = "";
    try {
      const issued = await admin("POST", "credentials", { kind: d.cred, label: "playground sample code" });
      await loadCredentials(); fillCreds();
      filled = d.cred === "api_key" ? { kind: d.cred, key: issued.secret } : { kind: d.cred, ak: issued.public_id, sk: issued.secret };
      if (d.cred !== "api_key") credSel.value = String(issued.credential.id);
      render(); toast("示例代码已填入新凭证（密钥仅显示这一次）");
    } catch (e) { err.textContent = e.message; }
  });
  dialect.addEventListener("change", fillTargets);
  for (const el of [target, prompt, streamBox]) { el.addEventListener("input", render); el.addEventListener("change", render); }
  paramsBox.addEventListener("input", render);

  const form = h("form", { class: "card", id: "pg-form" }, h("div", { class: "grid" },
    h("label", {}, "接口 Dialect", dialect), h("label", {}, "服务 / 模型 Service / model", target), credWrap,
    h("label", { class: "inline" }, streamBox, "流式 stream")),
    h("h2", { class: "hint" }, "参数 Parameters"), paramsBox,
    h("label", {}, "输入 Prompt", prompt),
    h("div", { class: "row" }, sendBtn, fillBtn, status), err);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = ""; output.textContent = ""; rawPre.textContent = "";
    const d = cur(), dn = dialect.value; const { path, body } = buildRequest();
    if (d.target === "service" && !target.value) { err.textContent = "请先在「在线服务」创建服务"; return; }
    if (d.cred !== "api_key" && !credSel.value) { err.textContent = "请选择或创建一个凭证"; return; }
    sendBtn.disabled = true; status.textContent = "请求中…"; const t0 = performance.now();
    try {
      const r = await fetch("/console/api/playground", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
        body: JSON.stringify({ dialect: dn, path, body, credential_id: d.cred === "api_key" ? null : Number(credSel.value) }) });
      const ctype = r.headers.get("content-type") || "";
      rawPre.textContent = `HTTP ${r.status}\nContent-Type: ${ctype}\n\n`;
      const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "", all = "";
      for (;;) {
        const { value, done } = await reader.read(); if (done) break;
        const chunk = dec.decode(value, { stream: true }); all += chunk; rawPre.textContent += chunk; rawPre.scrollTop = rawPre.scrollHeight;
        if (ctype.includes("event-stream")) {
          buf += chunk; let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i).trim(); buf = buf.slice(i + 1);
            if (!line.startsWith("data:")) continue; const data = line.slice(5).trim();
            if (!data || data === "[DONE]") continue;
            try { output.textContent += extractText(dn, JSON.parse(data)); } catch (e) { /* partial */ }
          }
        }
      }
      if (!ctype.includes("event-stream")) {
        try { const obj = JSON.parse(all); output.textContent = extractText(dn, obj) || ""; if (!r.ok) err.textContent = "HTTP " + r.status; } catch (e) { output.textContent = all; }
      }
      status.textContent = `完成 done · HTTP ${r.status} · ${Math.round(performance.now() - t0)} ms`;
      status.dataset.done = "1";
    } catch (e) { err.textContent = e.message; status.textContent = ""; }
    finally { sendBtn.disabled = false; }
  });

  const codeBody = h("div", {}, Object.values(codePres));
  showCode("python");
  main.replaceChildren(h("h1", {}, "API 在线调试平台 · Playground"),
    h("p", { class: "sub" }, "选择接口与服务/模型，设置参数，发送并实时查看流式输出、原始 HTTP 请求与响应，以及可直接运行的示例代码。"),
    form,
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "输出 Output"), output),
      h("div", { class: "card" }, h("h2", {}, "HTTP 请求 Request"), reqPre)),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "原始响应 Raw response / SSE"), rawPre),
      h("div", { class: "card" }, h("h2", {}, "示例代码 Sample code"), codeTabs, codeBody,
        h("p", { class: "hint" }, "<YOUR_…> 为凭证占位符；点击「用新凭证填充」可生成新凭证并直接填入。"))));
  fillTargets();
}

document.addEventListener("DOMContentLoaded", boot);
