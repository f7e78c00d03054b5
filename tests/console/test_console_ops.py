"""The console's operator pages in a real browser (headless Chromium) against the shared
`wharf serve`: the request log (filters, keyset pages, CSV / JSON export), call statistics
per service on the usage page, credential expiry / allow-lists / rotation on the keys page,
the audit log and the admins-only accounts page. Each checks isolation (a tenant never sees
another account's requests, stats, audit entries or the accounts page, in the page or by
calling the proxy itself) and that a bad input shows the API's own message."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from tests.console.test_console import shot, sign_in, uniq
from tests.policy_http.dialects import call, provision

MODEL = "smollm2-135m-instruct"


def fetch(page, path: str, method: str = "GET", body=None) -> dict:
    """The page's own fetch (its session cookie, its CSRF token): {status, text, headers}."""
    return page.evaluate("""async ([path, method, body]) => {
        const s = await fetch('/console/session').then(r => r.json());
        const opts = {method, headers: {'X-CSRF-Token': s.csrf}};
        if (body !== null) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
        const r = await fetch(path, opts);
        return {status: r.status, text: await r.text(), disposition: r.headers.get('content-disposition')};
    }""", [path, method, body])


def admin_api(server, key: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{server.url}/admin/api/{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=30, **kw)


@pytest.fixture(scope="module")
def tenant(server):
    """An account with a key of each kind and two services, and requests in two dialects
    plus one that failed after authentication (an unknown model)."""
    ident = provision(server, "ops-t")
    for dialect in ("openai", "qianfan-chat", "qianfan-chat"):
        assert call(dialect, server.url, ident, "你好", 2).outcome == "ok"
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {ident.api_key}"},
                   json={"model": "no-such-model", "prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 404
    # A change through the admin API, for the audit page.
    assert admin_api(server, ident.api_key, "POST", "credentials",
                     json={"kind": "api_key", "label": "审计 测试"}).status_code == 201
    return ident


@pytest.fixture(scope="module")
def other(server):
    ident = provision(server, "ops-o")
    assert call("qianfan-chat", server.url, ident, "Hi", 2).outcome == "ok"
    assert admin_api(server, ident.api_key, "POST", "credentials",
                     json={"kind": "api_key", "label": "other-secret-label"}).status_code == 201
    return ident


@pytest.fixture(scope="module")
def ops(server):
    """A fresh admin account of this module (its key page starts empty)."""
    acct = server.platform.accounts.create(uniq("ops-admin"), is_admin=True)
    return acct, server.platform.credentials.create(acct.id, "api_key", label="ops").secret


def request_ids(server, account_id: int) -> list[str]:
    from wharf.platform.request_log import RequestFilter
    entries, _ = server.platform.request_log.page(RequestFilter(account_id=account_id), limit=1000)
    return [e.request_id for e in entries]


def rows(page, table: str, attr: str) -> list[str]:
    return page.locator(f"#{table} tbody tr").evaluate_all(f"els => els.map(e => e.getAttribute('{attr}'))")


def expect_requests(page, ids: list[str]):
    """The request table shows exactly these records, in this order (waits for the page)."""
    found = page.locator("#req-table tbody tr")
    expect(found).to_have_count(len(ids))
    for i, rid in enumerate(ids):
        expect(found.nth(i)).to_have_attribute("data-request", rid)


def test_requests_page_filters_pages_export_and_isolation(server, new_page, tenant, other, ops, shots):
    mine, theirs = request_ids(server, tenant.account_id), request_ids(server, other.account_id)
    assert len(mine) == 4 and theirs
    page = new_page()
    sign_in(page, tenant.api_key, "#/requests")
    expect(page.locator("a[data-page=requests]")).to_be_visible()
    expect(page.locator("a[data-page=accounts]")).to_be_hidden()
    expect(page.locator("#req-page-info")).to_contain_text("4 条")
    expect_requests(page, mine)                 # newest first, all of them
    assert not set(theirs) & set(page.locator("#req-table").inner_text().split())
    expect(page.locator("#req-account")).to_have_count(0)               # only admins choose an account
    shot(page, shots, "requests")

    # Filters: dialect, then status (the failed request), then a time range that holds nothing.
    page.select_option("#req-dialect", "qianfan")
    page.click("#req-apply")
    expect(page.locator("#req-page-info")).to_contain_text("2 条")
    expect(page.locator("#req-table tbody .req-status")).to_have_text(["ok", "ok"])
    page.select_option("#req-dialect", "")
    page.fill("#req-status", "error")
    page.click("#req-apply")
    expect(page.locator("#req-page-info")).to_contain_text("1 条")
    expect(page.locator("#req-table tbody .req-status")).to_have_text([("error:not_found")])
    page.fill("#req-status", "")
    page.fill("#req-since", "2020-01-01T00:00")
    page.fill("#req-until", "2020-01-02T00:00")
    page.click("#req-apply")
    expect(page.locator("#req-page-info")).to_have_text("没有记录 no records")
    page.fill("#req-since", "")
    page.fill("#req-until", "")

    # Keyset pages of two.
    page.fill("#req-limit", "2")
    page.click("#req-apply")
    expect(page.locator("#req-page-info")).to_contain_text("第 1 页")
    expect_requests(page, mine[:2])
    page.click("#req-next")
    expect(page.locator("#req-page-info")).to_contain_text("第 2 页")
    expect_requests(page, mine[2:])
    expect(page.locator("#req-next")).to_be_disabled()
    page.click("#req-first")
    expect(page.locator("#req-page-info")).to_contain_text("第 1 页")

    # A bad status: the API's own message, no rows.
    page.fill("#req-status", "bogus")
    page.click("#req-apply")
    expect(page.locator("#req-error")).to_contain_text("status must be ok, cancelled, blocked, error")
    expect(page.locator("#req-table tbody tr")).to_have_count(0)

    # One request by its id; another account's id is "not found".
    page.fill("#req-status", "")
    page.fill("#req-id", mine[-1])
    page.click("#req-apply")
    expect_requests(page, [mine[-1]])
    page.fill("#req-id", theirs[0])
    page.click("#req-apply")
    expect(page.locator("#req-error")).to_contain_text("no request with this id")
    page.fill("#req-id", "")

    # Export links carry the filter; the files hold this account's records only.
    page.select_option("#req-dialect", "qianfan")
    page.fill("#req-limit", "50")
    page.click("#req-apply")
    expect(page.locator("#req-page-info")).to_contain_text("2 条")
    got = fetch(page, page.get_attribute("#req-export-csv", "href"))
    assert got["status"] == 200 and "requests.csv" in got["disposition"]
    exported = list(csv.DictReader(io.StringIO(got["text"])))
    assert [r["request_id"] for r in exported] == [i for i in mine if i.startswith("as-")]
    assert {r["dialect"] for r in exported} == {"qianfan"}
    got = fetch(page, page.get_attribute("#req-export-json", "href").replace("dialect=qianfan", "dialect=openai"))
    assert [r["request_id"] for r in json.loads(got["text"])] == [i for i in mine if not i.startswith("as-")]

    # The server, not the page, keeps a tenant to its own records.
    assert fetch(page, f"/console/api/admin/requests?account_id={other.account_id}")["status"] == 403
    everyone = json.loads(fetch(page, "/console/api/admin/requests?all=true&limit=1000")["text"])["data"]
    assert {r["account_id"] for r in everyone} == {tenant.account_id}
    got = fetch(page, "/console/api/admin/requests/export?format=json&all=true")
    assert {r["account_id"] for r in json.loads(got["text"])} == {tenant.account_id}

    # An admin sees every account, or picks one.
    admin_page = new_page()
    sign_in(admin_page, ops[1], "#/requests")
    expect(admin_page.locator("#req-page-info")).to_contain_text("条")
    shown = set(rows(admin_page, "req-table", "data-request"))
    assert set(mine) <= shown and set(theirs) <= shown
    admin_page.select_option("#req-account", str(other.account_id))
    admin_page.click("#req-apply")
    expect(admin_page.locator("#req-page-info")).to_contain_text(f"{len(theirs)} 条")
    expect_requests(admin_page, theirs)
    assert not page.errors and not admin_page.errors


def test_usage_page_shows_calls_per_service(server, new_page, tenant, other):
    page = new_page()
    sign_in(page, tenant.api_key, "#/usage")
    row = page.locator(f"#svc-stats-table tr[data-service='{tenant.qf_chat}']")
    expect(row).to_have_count(1)
    expect(row.locator(".st-requests")).to_have_text("2")
    expect(row.locator(".st-outcomes")).to_have_text("2 / 0 / 0")
    expect(row.locator(".st-errors")).to_have_text("0")
    for cell in (".st-latency", ".st-ttft"):           # "p50 / p95" in ms, both measured
        p50, p95 = (int(x) for x in row.locator(cell).inner_text().split(" / "))
        assert 0 <= p50 <= p95
    assert row.get_attribute("data-day") == server.platform.quota.today().isoformat()
    expect(page.locator(f"#svc-stats-table tr[data-service='{other.qf_chat}']")).to_have_count(0)
    page.select_option("#svc-stats-service", tenant.qf_chat)
    expect(page.locator("#svc-stats-table tbody tr")).to_have_count(1)
    # A tenant cannot ask for another account's stats through the proxy.
    assert fetch(page, f"/console/api/admin/stats/services?account_id={other.account_id}")["status"] == 403
    assert not page.errors


def test_credentials_expiry_allow_lists_and_rotation(server, new_page, ops, tenant, shots):
    acct, key = ops
    svc = server.platform.services.create(acct.id, uniq("keys"), MODEL, "chat", "轮换")
    page = new_page()
    sign_in(page, key, "#/credentials")
    page.select_option("#cred-kind", "api_key")
    page.fill("#cred-label", "限时 key")
    page.fill("#cred-expires", "2030-01-02T03:04")
    page.select_option("#cred-models", [MODEL])
    page.select_option("#cred-services", [str(svc.id)])
    page.fill("#cred-quota_tokens_per_day", "1000")
    page.click("#cred-create")
    secret = page.locator("#new-secret [data-field=api_key]").inner_text()
    cred = next(c for c in server.platform.credentials.list(acct.id) if c.label == "限时 key")
    scope = server.platform.key_scopes.get(cred.id)
    assert scope.allowed_models == [MODEL] and scope.allowed_services == [svc.id]
    assert scope.quota_tokens_per_day == 1000 and scope.quota_chars_per_day is None
    assert scope.expires_at.replace(tzinfo=dt.timezone.utc) == dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    row = page.locator(f"tr[data-cred='{cred.id}']")
    expect(row.locator(".cred-expires")).to_contain_text("2030")
    expect(row.locator(".cred-scope")).to_contain_text(MODEL)
    expect(row.locator(".cred-scope")).to_contain_text(svc.endpoint)
    expect(row.locator(".scope-quota")).to_have_text("配额 quota: 1,000 tokens/天 tokens/day")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    shot(page, shots, "credentials-scope")

    # Rotate with two hours of grace: a new secret once, both work, the old one ends then.
    row.locator("button[data-rotate]").click()
    page.fill("#rot-grace", "2")
    page.select_option("#rot-unit", "3600")
    page.click("#rot-go")
    expect(page.locator("#rotated-note")).to_be_visible()
    new_secret = page.locator("#new-secret [data-field=api_key]").inner_text()
    assert new_secret != secret
    for k in (secret, new_secret):
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {k}"}).status_code == 200
    ends = server.platform.key_scopes.get(cred.id).expires_at.replace(tzinfo=dt.timezone.utc)
    assert abs((ends - dt.datetime.now(dt.timezone.utc)).total_seconds() - 7200) < 120
    new_id = max(c.id for c in server.platform.credentials.list(acct.id))
    assert server.platform.key_scopes.get(new_id).allowed_models == [MODEL]       # same reach
    expect(page.locator(f"tr[data-cred='{new_id}'] .cred-scope")).to_contain_text(svc.endpoint)

    # A grace beyond a year: the API's message. Then rotate the new one at once (grace 0).
    page.locator(f"tr[data-cred='{new_id}'] button[data-rotate]").click()
    page.fill("#rot-grace", "400")
    page.select_option("#rot-unit", "86400")
    page.click("#rot-go")
    expect(page.locator("#panel-error")).to_contain_text("less than or equal to 31536000")
    page.fill("#rot-grace", "0")
    page.click("#rot-go")
    expect(page.locator(f"tr[data-cred='{new_id}'] .tag.off")).to_have_text("已过期 expired")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {new_secret}"}).status_code == 401

    # Clearing a scope from the editor (a bad quota first: the API's words, nothing changed).
    page.locator(f"tr[data-cred='{cred.id}'] button[data-scope]").click()
    expect(page.locator("#scope-quota_tokens_per_day")).to_have_value("1000")
    page.fill("#scope-quota_tokens_per_day", "99999999999999999999")
    page.click("#scope-save")
    expect(page.locator("#panel-error")).to_contain_text("less than or equal to")
    assert server.platform.key_scopes.get(cred.id).quota_tokens_per_day == 1000
    page.fill("#scope-quota_tokens_per_day", "")
    page.fill("#scope-expires", "")
    page.select_option("#scope-models", [])
    page.click("#scope-save")
    expect(page.locator(f"tr[data-cred='{cred.id}'] .cred-expires")).to_have_text("永不 never")
    cleared = server.platform.key_scopes.get(cred.id)
    assert cleared.allowed_models is None and cleared.quota_tokens_per_day is None

    # A tenant sees its keys' reach, may rotate its own, and may not set a scope.
    tpage = new_page()
    sign_in(tpage, tenant.api_key, "#/credentials")
    expect(tpage.locator("#cred-table tbody tr").first).to_be_visible()
    expect(tpage.locator("#cred-expires")).to_have_count(0)
    expect(tpage.locator("button[data-scope]")).to_have_count(0)
    expect(tpage.locator(".cred-scope").first).to_contain_text("全部模型 any model")
    assert "other-secret-label" not in tpage.content()
    own = next(c for c in server.platform.credentials.list(tenant.account_id) if c.label == "审计 测试")
    got = fetch(tpage, f"/console/api/admin/credentials/{own.id}/scope", "PATCH", {"allowed_models": [MODEL]})
    assert got["status"] == 403
    tpage.locator(f"tr[data-cred='{own.id}'] button[data-rotate]").click()
    tpage.click("#rot-go")                                      # default grace: one day
    expect(tpage.locator("#new-secret [data-field=api_key]")).to_be_visible()
    assert fetch(tpage, f"/console/api/admin/credential-scopes?account_id={acct.id}")["status"] == 403
    assert not page.errors and not tpage.errors


def test_audit_page_own_account_only_for_tenants(server, new_page, tenant, other, ops, shots):
    page = new_page()
    sign_in(page, tenant.api_key, "#/audit")
    # The oldest entry with that label is its create (a rotation makes another key with it).
    entry = page.locator("#audit-table tbody tr", has_text="审计 测试").last
    expect(entry.locator(".audit-object")).to_contain_text("credential #")
    expect(entry.locator(".audit-actor")).to_contain_text("凭证 #")
    expect(entry).to_contain_text("POST /admin/api/credentials")
    assert "other-secret-label" not in page.locator("#audit-table").inner_text()
    expect(page.locator("#audit-account")).to_have_count(0)
    shot(page, shots, "audit")
    assert fetch(page, f"/console/api/admin/audit?account_id={other.account_id}")["status"] == 403
    data = json.loads(fetch(page, "/console/api/admin/audit?limit=500")["text"])["data"]
    assert data and {e["account_id"] for e in data} == {tenant.account_id}

    # An admin sees both, and narrows to one account and one object type.
    admin_page = new_page()
    sign_in(admin_page, ops[1], "#/audit")
    admin_page.select_option("#audit-account", str(other.account_id))
    admin_page.select_option("#audit-type", "credential")
    admin_page.click("#audit-apply")
    expect(admin_page.locator("#audit-table tbody tr", has_text="other-secret-label")).to_have_count(1)
    expect(admin_page.locator("#audit-table tbody tr", has_text="审计 测试")).to_have_count(0)
    assert not page.errors and not admin_page.errors


def test_accounts_page_for_admins_only(server, new_page, ops, tenant, shots):
    page = new_page()
    sign_in(page, ops[1], "#/accounts")
    expect(page.locator("a[data-page=accounts]")).to_be_visible()
    # A name the platform refuses (names are ASCII identifiers): its message, nothing made.
    before = len(server.platform.accounts.list())
    page.fill("#acct-name", "团队甲")
    page.click("#acct-create")
    expect(page.locator("#acct-error")).to_contain_text("name must be 1-64 characters")
    assert len(server.platform.accounts.list()) == before

    name = f"team-{uuid.uuid4().hex[:6]}"
    page.fill("#acct-name", name)
    page.fill("#new-quota_tokens_per_day", "1000")
    page.fill("#new-rpm", "60")
    page.click("#acct-create")
    row = page.locator(f"tr[data-name='{name}']")
    expect(row.locator(".acct-quota")).to_contain_text("tokens 1,000")
    expect(row.locator(".acct-limits")).to_contain_text("RPM 60")
    acct = next(a for a in server.platform.accounts.list() if a.name == name)
    assert acct.quota_tokens_per_day == 1000 and acct.rpm == 60 and acct.quota_chars_per_day is None

    # Limits: set a chars quota, clear the rpm.
    row.locator("button[data-edit]").click()
    page.fill("#edit-quota_chars_per_day", "500")
    page.fill("#edit-rpm", "")
    page.click("#acct-save")
    expect(row.locator(".acct-quota")).to_contain_text("字符 500")
    expect(row.locator(".acct-limits")).to_contain_text("RPM —")
    acct = server.platform.accounts.get(acct.id)
    assert acct.quota_chars_per_day == 500 and acct.rpm is None and acct.quota_tokens_per_day == 1000

    # Disable locks its key out at once; enable lets it back.
    key = server.platform.credentials.create(acct.id, "api_key").secret
    row.locator("button[data-toggle]").click()
    expect(row.locator(".acct-status")).to_have_text("disabled")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    row.locator("button[data-toggle]").click()
    expect(row.locator(".acct-status")).to_have_text("active")
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # Each account's usage: the tenant's four requests today.
    expect(page.locator(f"tr[data-account='{tenant.account_id}'] .acct-today")).to_contain_text("4 次")
    shot(page, shots, "accounts")

    # A tenant: no nav entry, a plain refusal on the page, 403 from the API.
    tpage = new_page()
    sign_in(tpage, tenant.api_key, "#/accounts")
    expect(tpage.locator("a[data-page=accounts]")).to_be_hidden()
    expect(tpage.locator("#accounts-denied")).to_be_visible()
    assert fetch(tpage, "/console/api/admin/accounts", "POST", {"name": uniq("sneaky")})["status"] == 403
    assert fetch(tpage, f"/console/api/admin/accounts/{tenant.account_id}", "PATCH", {"rpm": None})["status"] == 403
    assert fetch(tpage, f"/console/api/admin/accounts/{acct.id}/disable", "POST")["status"] == 403
    listed = json.loads(fetch(tpage, "/console/api/admin/accounts")["text"])
    assert [a["id"] for a in listed] == [tenant.account_id]
    assert not page.errors and not tpage.errors


@pytest.mark.parametrize("name", ["requests", "audit", "accounts", "credentials"])
def test_phone_width_ops_pages(server, new_page, ops, tenant, name, shots):
    page = new_page(390, 844)
    sign_in(page, ops[1], f"#/{name}")
    expect(page.locator("main h1")).to_be_visible()
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} is {overflow}px wider than the screen"
    shot(page, shots, name)
    assert not page.errors
