"""The web console in a real browser (headless Chromium) against a real `wharf serve`:
sign-in and session rotation, services, credentials, playground streaming in two dialects
plus running its copied sample code, usage, account isolation, XSS escaping, CSRF, and a
screenshot of every page at 1280 px and 390 px."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import httpx
import pytest
from playwright.sync_api import expect

MODEL = "smollm2-135m-instruct"
COOKIE = "wharf_console"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"        # short enough for a service's API address (<= 20)


def sign_in(page, key: str, hash_: str = "#/services"):
    page.goto("/console" + hash_)
    page.fill("#api-key", key)
    page.click("#sign-in")
    expect(page.locator("#who-name")).to_be_visible()


def sid(page) -> str | None:
    return next((c["value"] for c in page.context.cookies() if c["name"] == COOKIE), None)


def shot(page, shots, name: str):
    page.wait_for_timeout(150)
    page.screenshot(path=str(shots / f"{name}-{page.viewport_size['width']}.png"), full_page=True)


@pytest.fixture(scope="module")
def user(server):
    return server.account(uniq("console-user"))


def run_code(lang: str, code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "SENSENOVA_", "OPENAI_"))}
    env["HOME"] = str(tmp_path)                # the qianfan SDK writes a cache under ~
    if lang == "python":
        path = tmp_path / "sample.py"
        path.write_text(code)
        cmd = [sys.executable, str(path)]
    else:
        path = tmp_path / "sample.sh"
        path.write_text(code)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")   # python3 for jq-less parsing
        cmd = ["bash", "-e", "-o", "pipefail", str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def copied_code(page, lang: str) -> str:
    page.click(f"button[data-code={lang}]")
    page.click("#pg-copy")
    text = page.evaluate("navigator.clipboard.readText()")
    assert text == page.locator(f"#pg-code-{lang}").text_content()
    return text


def send_and_watch(page) -> str:
    """Send the playground request; return the final output after checking it arrived in pieces."""
    page.evaluate("""() => { window.__pieces = 0; const out = document.querySelector('#pg-output');
        new MutationObserver(() => { if (!document.querySelector('#pg-status').dataset.done && out.textContent)
            window.__pieces++; }).observe(out, {childList: true, characterData: true, subtree: true}); }""")
    page.locator("#pg-status").evaluate("e => delete e.dataset.done")
    page.click("#pg-send")
    expect(page.locator("#pg-status")).to_contain_text("HTTP 200", timeout=60_000)
    assert page.evaluate("window.__pieces") >= 2, "the stream did not arrive piece by piece"
    expect(page.locator("#pg-raw")).to_contain_text("text/event-stream")
    out = page.locator("#pg-output").inner_text()
    assert out.strip()
    return out


def set_param(page, name: str, value):
    page.fill(f"#pg-params input[data-param={name}]", str(value))


# -- tests ---------------------------------------------------------------------------------

def test_sign_in_rotates_session_and_rejects_bad_key(server, new_page, user, shots):
    page = new_page()
    page.goto("/console")
    expect(page.locator("#login-form")).to_be_visible()
    shot(page, shots, "login")
    page.fill("#api-key", "wk-not-a-key")
    page.click("#sign-in")
    expect(page.locator("#login-error")).to_contain_text("登录失败")
    assert sid(page) is None

    # A session id planted before sign-in (fixation) must not survive it.
    page.context.add_cookies([{"name": COOKIE, "value": "planted-by-attacker", "domain": "127.0.0.1",
                               "path": "/console"}])
    sign_in(page, user[1])
    first = sid(page)
    assert first and first != "planted-by-attacker"
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""           # invisible to JS

    # Signing in again mints a new id and kills the old one.
    page.evaluate("""k => fetch('/console/session', {method: 'POST', headers: {'Content-Type': 'application/json'},
                          body: JSON.stringify({api_key: k})})""", user[1])
    second = sid(page)
    assert second and second != first
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/console/session", cookies={COOKIE: first}).json() == {"signed_in": False}
        assert c.get("/console/session", cookies={COOKIE: second}).json()["signed_in"] is True
        # The API key never reaches the browser.
        assert user[1] not in c.get("/console/session", cookies={COOKIE: second}).text
    assert not page.errors


def test_services_create_xss_escaped_and_isolated(server, new_page, user, shots):
    page = new_page()
    sign_in(page, user[1])
    ep = uniq("svc")
    page.fill("#svc-endpoint", ep)
    page.select_option("#svc-model", MODEL)
    page.select_option("#svc-kind", "chat")
    page.fill("#svc-desc", XSS)
    expect(page.locator("#svc-url-preview")).to_have_text(
        f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{{前缀}}_{ep}")
    page.click("#svc-create")
    row = page.locator(f"tr[data-endpoint$='_{ep}']")            # behind the random prefix
    expect(row).to_be_visible()
    typed, ep = ep, row.get_attribute("data-endpoint")
    assert re.fullmatch(rf"[a-z0-9]{{8}}_{re.escape(typed)}", ep)
    expect(row).to_be_visible()
    expect(row.locator(".svc-desc")).to_have_text(XSS)           # shown literally, as text
    expect(row).to_contain_text(f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{ep}")
    assert row.locator("img, script").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    shot(page, shots, "services")
    assert [s.endpoint for s in server.platform.services.list(user[0].id)] == [ep]

    # Another normal account sees none of it, in the page or through the proxy.
    other = server.account(uniq("console-other"))
    page2 = new_page()
    sign_in(page2, other[1])
    expect(page2.locator("#svc-empty")).to_be_visible()
    assert ep not in page2.content()
    status = page2.evaluate(f"""() => fetch('/console/api/admin/services?account_id={user[0].id}')
                                 .then(r => r.status)""")
    assert status == 403
    svc_id = server.platform.services.list(user[0].id)[0].id
    csrf = page2.evaluate("fetch('/console/session').then(r => r.json()).then(s => s.csrf)")
    status = page2.evaluate(f"""c => fetch('/console/api/admin/services/{svc_id}',
                                {{method: 'DELETE', headers: {{'X-CSRF-Token': c}}}}).then(r => r.status)""", csrf)
    assert status == 404
    assert server.platform.services.list(user[0].id)

    # Delete from the page.
    page.on("dialog", lambda d: d.accept())
    ep2 = uniq("svc-del")
    page.fill("#svc-endpoint", ep2)
    page.click("#svc-create")
    expect(page.locator(f"tr[data-endpoint$='_{ep2}']")).to_be_visible()
    page.click(f"tr[data-endpoint$='_{ep2}'] button[data-delete]")
    expect(page.locator(f"tr[data-endpoint$='_{ep2}']")).to_have_count(0)
    assert not page.errors and not page2.errors


def test_csrf_state_changes_need_the_token(server, new_page, user):
    page = new_page()
    sign_in(page, user[1])
    before = len(server.platform.services.list(user[0].id))
    body = {"endpoint": uniq("csrf"), "model": MODEL, "kind": "chat"}
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        status = page.evaluate("""([b, h]) => fetch('/console/api/admin/services', {method: 'POST',
            headers: {'Content-Type': 'application/json', ...h}, body: JSON.stringify(b)}).then(r => r.status)""",
                               [body, headers])
        assert status == 403
    # Also the playground proxy and sign-out.
    assert page.evaluate("""() => fetch('/console/api/playground', {method: 'POST', headers: {'Content-Type':
        'application/json'}, body: '{}'}).then(r => r.status)""") == 403
    assert page.evaluate("fetch('/console/session', {method: 'DELETE'}).then(r => r.status)") == 403
    assert len(server.platform.services.list(user[0].id)) == before
    # A cross-site form post cannot sign in (JSON only) — and with the token it works.
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/console/session", data={"api_key": user[1]})
        assert r.status_code == 403 and COOKIE not in r.cookies
        r = c.post("/console/session", json={"api_key": user[1]}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
    csrf = page.evaluate("fetch('/console/session').then(r => r.json()).then(s => s.csrf)")
    status = page.evaluate("""([b, c]) => fetch('/console/api/admin/services', {method: 'POST',
        headers: {'Content-Type': 'application/json', 'X-CSRF-Token': c},
        body: JSON.stringify(b)}).then(r => r.status)""", [body, csrf])
    assert status == 201


def test_credentials_create_copy_revoke(server, new_page, user, shots):
    page = new_page()
    sign_in(page, user[1], "#/credentials")
    page.select_option("#cred-kind", "qianfan_app")
    page.fill("#cred-label", "凭证 <b>bold</b>")
    page.click("#cred-create")
    box = page.locator("#new-secret")
    expect(box).to_be_visible()
    ak = box.locator("[data-field=api_key]").inner_text()
    sk = box.locator("[data-field=secret_key]").inner_text()
    assert len(ak) == 24 and len(sk) == 32
    box.locator("button[data-copy=secret_key]").click()
    assert page.evaluate("navigator.clipboard.readText()") == sk
    # It works against the real OAuth endpoint.
    r = httpx.post(server.url + "/oauth/2.0/token", params={"grant_type": "client_credentials",
                                                            "client_id": ak, "client_secret": sk})
    assert "access_token" in r.json()
    row = page.locator("#cred-table tbody tr").first
    expect(row).to_contain_text(ak)
    expect(row).to_contain_text("凭证 <b>bold</b>")
    shot(page, shots, "credentials")
    for kind in ("api_key", "sensenova", "qianfan_iam"):
        n = page.locator("#cred-table tbody tr").count()
        page.select_option("#cred-kind", kind)
        page.click("#cred-create")
        expect(page.locator("#cred-table tbody tr")).to_have_count(n + 1)
        label = kind.split("_")[0].replace("sensenova", "SenseNova").replace("qianfan", "千帆").replace("api", "API")
        expect(page.locator("#cred-table tbody tr").first).to_contain_text(label)
    page.on("dialog", lambda d: d.accept())
    page.locator("#cred-table tbody tr").first.locator("button[data-revoke]").click()
    expect(page.locator("#cred-table tbody tr").first).to_contain_text("已吊销")
    assert not page.errors


def test_playground_openai_stream_and_sample_code(server, new_page, user, shots, tmp_path):
    page = new_page()
    sign_in(page, user[1], "#/playground")
    page.select_option("#pg-dialect", "openai-chat")
    page.select_option("#pg-target", MODEL)
    set_param(page, "max_tokens", 12)
    set_param(page, "temperature", 0.7)
    page.fill("#pg-prompt", "Say hello in one short sentence.")
    req = page.locator("#pg-request").inner_text()
    assert req.startswith(f"POST {server.url}/v1/chat/completions")
    assert "masked" in req and user[1] not in req
    send_and_watch(page)
    expect(page.locator("#pg-raw")).to_contain_text("data: [DONE]")
    shot(page, shots, "playground")

    # Sample code with placeholders is marked; fill it with a fresh credential and run it.
    expect(page.locator("#pg-code-python")).to_contain_text("<YOUR_WHARF_API_KEY>")
    page.click("#pg-fill")
    expect(page.locator("#pg-code-python")).to_contain_text("wk-")
    py = copied_code(page, "python")
    assert "<YOUR_" not in py and "from openai import OpenAI" in py
    res = run_code("python", py, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()
    curl = copied_code(page, "curl")
    res = run_code("bash", curl, tmp_path)
    assert res.returncode == 0 and "data: [DONE]" in res.stdout, res.stderr[-2000:]
    assert not page.errors


def test_playground_qianfan_stream_and_sample_code(server, new_page, user, tmp_path):
    ep = server.platform.services.create(user[0].id, uniq("pg-chat"), MODEL, "chat").endpoint
    page = new_page()
    sign_in(page, user[1], "#/playground")
    page.select_option("#pg-dialect", "qianfan-chat")
    page.select_option("#pg-target", ep)
    expect(page.locator("#pg-code-python")).to_contain_text("<YOUR_QIANFAN_SECRET_KEY>")
    page.click("#pg-fill")                       # creates a qianfan_app credential and selects it
    expect(page.locator("#pg-code-python")).not_to_contain_text("<YOUR_")
    set_param(page, "max_output_tokens", 12)
    set_param(page, "temperature", 0.5)
    page.fill("#pg-prompt", "你好")
    request_text = page.locator("#pg-request").inner_text()
    assert f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{ep}?access_token=****" in request_text
    send_and_watch(page)
    expect(page.locator("#pg-raw")).to_contain_text('"is_end":true')
    py = copied_code(page, "python")
    assert "import qianfan" in py
    res = run_code("python", py, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()
    curl = copied_code(page, "curl")
    res = run_code("bash", curl, tmp_path)
    assert res.returncode == 0 and '"is_end":true' in res.stdout.replace(" ", ""), (res.stdout, res.stderr[-2000:])
    assert not page.errors


def test_playground_sensenova_and_welm(server, new_page, user, tmp_path):
    page = new_page()
    sign_in(page, user[1], "#/playground")
    page.select_option("#pg-dialect", "sensenova")
    page.click("#pg-fill")
    expect(page.locator("#pg-code-python")).not_to_contain_text("<YOUR_")
    set_param(page, "max_new_tokens", 8)
    send_and_watch(page)
    expect(page.locator("#pg-raw")).to_contain_text("data:[DONE]")
    res = run_code("python", copied_code(page, "python"), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    page.select_option("#pg-dialect", "welm")
    set_param(page, "max_tokens", 8)
    set_param(page, "n", 2)
    page.fill("#pg-prompt", "The sky is")
    page.click("#pg-send")
    expect(page.locator("#pg-status")).to_contain_text("HTTP 200", timeout=60_000)
    expect(page.locator("#pg-raw")).to_contain_text('"object":"text_generation"')
    assert not page.errors


def test_usage_counts_requests_and_models_page(server, new_page, user, shots):
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {user[1]}"},
                   json={"model": MODEL, "prompt": "Hi", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200
    recs = server.platform.usage.records(user[0].id, limit=1000)
    assert recs
    page = new_page()
    sign_in(page, user[1], "#/usage")
    expect(page.locator("#total-requests")).to_have_text(str(len(recs)))
    expect(page.locator("#usage-by-model")).to_contain_text(MODEL)
    bars = page.locator("#chart-requests rect[data-value]")
    assert sum(int(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")) == len(recs)
    page.click("button[data-group=service]")
    expect(page.locator("#chart-requests")).to_be_visible()
    expect(page.locator("#quota")).to_contain_text("不限")
    shot(page, shots, "usage")

    page.click("a[data-page=models]")
    row = page.locator(f"tr[data-model='{MODEL}']")
    expect(row).to_be_visible()
    expect(page.locator("#stats-time")).not_to_have_text("…")
    shot(page, shots, "models")
    assert not page.errors


@pytest.mark.parametrize("name", ["login", "services", "credentials", "usage", "playground", "models"])
def test_phone_width_screenshots(server, new_page, user, shots, name):
    page = new_page(390, 844)
    if name == "login":
        page.goto("/console")
        expect(page.locator("#login-form")).to_be_visible()
    else:
        sign_in(page, user[1], f"#/{name}")
        expect(page.locator("main h1")).to_be_visible()
        page.wait_for_load_state("networkidle") if name != "models" else page.wait_for_timeout(500)
    # Nothing wider than the phone screen (tables scroll inside their own box).
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} is {overflow}px wider than the screen"
    shot(page, shots, name)
    assert not page.errors
