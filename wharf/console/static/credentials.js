/* 凭证 Credentials page: create (an admin also sets expiry and allow-lists), see each key's
   expiry and reach, rotate with a chosen grace period (the new secret shown once), revoke.
   Uses app.js's helpers (h, admin, state, secretBox, ...). The admin API decides who may
   do what: only an admin sets a scope, an owner may rotate its own keys. */
"use strict";

const GRACE_UNITS = { 1: "秒 s", 60: "分钟 min", 3600: "小时 h", 86400: "天 d" };

function scopeOf(scopes, id) { return scopes.find(s => s.credential_id === id) || { expires_at: null, allowed_models: null, allowed_services: null }; }
function scopeExpired(scope) { return scope.expires_at && new Date(scope.expires_at) <= new Date(); }
function credServiceName(id) { const s = state.services.find(x => x.id === id); return s ? s.endpoint : `#${id}`; }
const KEY_QUOTAS = [["quota_chars_per_day", "字符/天 chars/day"], ["quota_tokens_per_day", "tokens/天 tokens/day"]];
function quotaText(scope) {
  const set = KEY_QUOTAS.filter(([k]) => scope[k] !== null && scope[k] !== undefined);
  return set.length ? set.map(([k, label]) => `${scope[k].toLocaleString()} ${label}`).join(" · ") : "";
}
function reachText(scope) {
  const models = scope.allowed_models === null ? "全部模型 any model" : (scope.allowed_models.join(", ") || "（无 none）");
  const services = scope.allowed_services === null ? "全部服务 any service" : (scope.allowed_services.map(credServiceName).join(", ") || "（无 none）");
  const quota = quotaText(scope);
  return [h("div", { class: "scope-models" }, models), h("div", { class: "scope-services muted" }, services),
    quota ? h("div", { class: "scope-quota" }, "配额 quota: " + quota) : null];
}

// Expiry + allow-list inputs, for a new key or an existing one (admins only).
function scopeFields(prefix, scope, accountId) {
  const expires = h("input", { id: prefix + "-expires", type: "datetime-local", value: isoToLocal(scope.expires_at) });
  const pick = (id, options, chosen) => h("select", { id, multiple: true, size: Math.min(4, Math.max(2, options.length)) },
    options.map(([value, label]) => h("option", { value, selected: chosen !== null && chosen.includes(value) }, label)));
  const models = pick(prefix + "-models", state.models.map(m => [m, m]), scope.allowed_models);
  const services = pick(prefix + "-services", state.services.filter(s => s.account_id === accountId).map(s => [String(s.id), s.endpoint]),
    scope.allowed_services === null ? null : scope.allowed_services.map(String));
  // The key's own daily quota, on top of its account's (empty: none of its own).
  const quotas = Object.fromEntries(KEY_QUOTAS.map(([k]) => [k, h("input", { id: `${prefix}-${k}`, type: "number", min: 0, step: 1,
    placeholder: "不限 none", value: scope[k] === null || scope[k] === undefined ? "" : scope[k] })]));
  const box = h("div", { class: "grid", id: prefix + "-scope" },
    h("label", {}, "到期 Expires (空 = 永不 never)", expires),
    h("label", {}, "允许的模型 Models (不选 = 全部 any)", models),
    h("label", {}, "允许的服务 Services (不选 = 全部 any)", services),
    KEY_QUOTAS.map(([k, label]) => h("label", {}, "每日配额 " + label, quotas[k])));
  const chosen = (sel) => [...sel.selectedOptions].map(o => o.value);
  box.clear = () => {
    expires.value = ""; [...models.options, ...services.options].forEach(o => { o.selected = false; });
    Object.values(quotas).forEach(i => { i.value = ""; });
  };
  box.read = () => {
    const m = chosen(models), s = chosen(services);
    return { expires_at: localToISO(expires.value) || null, allowed_models: m.length ? m : null,
      allowed_services: s.length ? s.map(Number) : null,
      ...Object.fromEntries(KEY_QUOTAS.map(([k]) => [k, quotas[k].value === "" ? null : Number(quotas[k].value)])) };
  };
  return box;
}

async function pageCredentials(main) {
  const isAdmin = state.me.account.is_admin;
  // The keys page is about the signed-in account's own keys (an admin's too).
  const loadScopes = () => admin("GET", "credential-scopes");
  let [, scopes] = await Promise.all([loadCredentials(), loadScopes(), loadModels(),
    admin("GET", "services").then(list => { state.services = list; })]);
  const kind = h("select", { id: "cred-kind" }, Object.entries(KINDS).map(([k, v]) => h("option", { value: k }, v)));
  const label = h("input", { id: "cred-label", maxlength: 128, placeholder: "备注 label" });
  const out = h("div", { id: "cred-out" }); const err = h("p", { class: "error", id: "cred-error" });
  const newScope = isAdmin ? scopeFields("cred", { expires_at: null, allowed_models: null, allowed_services: null }, state.me.account.id) : null;
  const form = h("form", { class: "card", id: "cred-form" }, h("h2", {}, "创建凭证 Create credential"),
    h("div", { class: "grid" }, h("label", {}, "类型 Kind", kind), h("label", {}, "备注 Label", label),
      h("div", {}, h("button", { class: "btn", type: "submit", id: "cred-create" }, "创建 Create"))),
    newScope ? [h("h2", { class: "hint" }, "有效期与范围 Expiry and reach"), newScope] :
      h("p", { class: "hint" }, "到期时间与允许的模型/服务由管理员设置。An admin sets a key's expiry and allow-lists."),
    err, out);
  const panel = h("div", { id: "cred-panel" });
  const table = h("tbody", {});
  const reload = async () => { [, scopes] = await Promise.all([loadCredentials(), loadScopes()]); draw(); };

  function rotatePanel(c) {
    const amount = h("input", { id: "rot-grace", type: "number", min: 0, step: 1, value: 1, required: true });
    const unit = h("select", { id: "rot-unit" }, Object.entries(GRACE_UNITS).map(([v, t]) => h("option", { value: v, selected: v === "86400" }, t)));
    const perr = h("p", { class: "error", id: "panel-error" });
    const f = h("form", { class: "secret panel", id: "rotate-form" },
      h("p", {}, h("b", {}, `轮换凭证 Rotate ${c.public_id}`), " — 生成新密钥；旧密钥在宽限期内仍可使用。A new secret; the old one keeps working for the grace period."),
      h("div", { class: "row" }, h("label", {}, "宽限期 Grace", amount), h("label", {}, "单位 Unit", unit),
        h("button", { class: "btn", type: "submit", id: "rot-go" }, "轮换 Rotate"),
        h("button", { class: "btn ghost", type: "button", onclick: () => panel.replaceChildren() }, "取消 Cancel")),
      c.id === state.me.credential_id ? h("p", { class: "hint" }, "这是本次登录所用的凭证：宽限期结束后请用新密钥重新登录。This session's own key: sign in with the new one before the grace ends.") : null,
      perr);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault(); perr.textContent = "";
      try {
        const issued = await admin("POST", `credentials/${c.id}/rotate`, { grace_s: Math.round(Number(amount.value) * Number(unit.value)) });
        out.replaceChildren(secretBox(issued), h("p", { class: "hint", id: "rotated-note" },
          `旧凭证 ${c.public_id} 有效至 old one valid until ${fmtTime(issued.old.expires_at)}`));
        panel.replaceChildren(); await reload(); toast("已轮换 / rotated");
      } catch (e) { perr.textContent = e.message; }
    });
    panel.replaceChildren(f);
  }

  function scopePanel(c) {
    const fields = scopeFields("scope", scopeOf(scopes, c.id), c.account_id);
    const perr = h("p", { class: "error", id: "panel-error" });
    const f = h("form", { class: "secret panel", id: "scope-form" }, h("p", {}, h("b", {}, `范围 Scope ${c.public_id}`)), fields,
      h("div", { class: "row" }, h("button", { class: "btn", type: "submit", id: "scope-save" }, "保存 Save"),
        h("button", { class: "btn ghost", type: "button", onclick: () => panel.replaceChildren() }, "取消 Cancel")), perr);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault(); perr.textContent = "";
      try { await admin("PATCH", `credentials/${c.id}/scope`, fields.read()); panel.replaceChildren(); await reload(); toast("已保存 / saved"); }
      catch (e) { perr.textContent = e.message; }
    });
    panel.replaceChildren(f);
  }

  function actions(c) {
    if (c.revoked_at) return h("span", { class: "tag off" }, "已吊销 revoked");
    const scope = scopeOf(scopes, c.id);
    return h("div", { class: "row" },
      scopeExpired(scope) ? h("span", { class: "tag off" }, "已过期 expired") : h("button", { class: "btn ghost small", type: "button", "data-rotate": c.id, onclick: () => rotatePanel(c) }, "轮换 Rotate"),
      isAdmin ? h("button", { class: "btn ghost small", type: "button", "data-scope": c.id, onclick: () => scopePanel(c) }, "范围 Scope") : null,
      c.id === state.me.credential_id ? h("span", { class: "tag ok" }, "当前登录 in use") :
        h("button", { class: "btn danger small", type: "button", "data-revoke": c.id, onclick: async () => {
          if (!confirm("吊销该凭证？ Revoke?")) return;
          try { await admin("POST", `credentials/${c.id}/revoke`); await reload(); toast("已吊销 / revoked"); } catch (e) { toast(e.message); }
        } }, "吊销 Revoke"));
  }

  const draw = () => table.replaceChildren(...state.credentials.slice().reverse().map(c => {
    const scope = scopeOf(scopes, c.id);
    return h("tr", { "data-cred": c.id },
      h("td", {}, h("b", {}, KINDS[c.kind] || c.kind)), h("td", { class: "mono", "data-label": "ID" }, c.public_id + (c.kind === "api_key" ? "…" : "")),
      h("td", { "data-label": "备注" }, c.label || ""), h("td", { class: "hide-sm", "data-label": "创建" }, fmtTime(c.created_at)), h("td", { "data-label": "最近使用" }, fmtTime(c.last_used_at)),
      h("td", { class: "cred-expires", "data-label": "到期" }, scope.expires_at ? fmtTime(scope.expires_at) : "永不 never"),
      h("td", { class: "cred-scope", "data-label": "范围" }, reachText(scope)),
      h("td", {}, actions(c)));
  }));

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); err.textContent = ""; out.replaceChildren();
    const scope = newScope ? newScope.read() : null;
    try {
      const issued = await admin("POST", "credentials", { kind: kind.value, label: label.value });
      if (scope && Object.values(scope).some(v => v !== null)) {
        try { await admin("PATCH", `credentials/${issued.credential.id}/scope`, scope); }
        catch (e) {      // never leave behind a key wider than the one asked for
          await admin("POST", `credentials/${issued.credential.id}/revoke`).catch(() => {});
          await reload();
          throw new Error("范围无效，凭证已吊销 scope refused, the new key was revoked: " + e.message);
        }
      }
      out.replaceChildren(secretBox(issued)); label.value = ""; if (newScope) newScope.clear();
      await reload();
    } catch (e) { err.textContent = e.message; }
  });
  draw();
  main.replaceChildren(h("h1", {}, "凭证 Credentials"),
    h("p", { class: "sub" }, "API Key 用于 OpenAI / WeLM；千帆与 SenseNova 使用各自的 AK/SK。"), form,
    h("div", { class: "card" }, h("h2", {}, "凭证列表"), panel, h("div", { class: "table-wrap" }, h("table", { id: "cred-table", class: "cards" },
      h("thead", {}, h("tr", {}, h("th", {}, "类型"), h("th", {}, "ID"), h("th", {}, "备注"), h("th", { class: "hide-sm" }, "创建"), h("th", {}, "最近使用"),
        h("th", {}, "到期 Expires"), h("th", {}, "范围 Reach"), h("th", {}, ""))), table))));
}
PAGES.credentials = pageCredentials;
