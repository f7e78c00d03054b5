"""Two stateless gateway replicas on one PostgreSQL + one Redis, sharing WHARF_SECRET_KEY:
whatever one replica issues (OAuth tokens, keys, console sessions) works on the other, a
lexicon change on one is enforced by the other within seconds, and requests spread over
both get exactly one usage record each in the shared store. (Shared rate limits across
processes are tested by the policy suite.)"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid

import httpx
import pytest

from tests.conftest import MODEL

QF = "/rpc/2.0/ai_custom/v1/wenxinworkshop"


@pytest.fixture(scope="module")
def replicas(server_factory, pg_cluster, redis_url):
    from wharf.platform.secretbox import SecretBox

    env = {"WHARF_DATABASE_URL": pg_cluster.new_database(), "WHARF_REDIS_URL": redis_url,
           "WHARF_SECRET_KEY": SecretBox.generate_key()}
    a = server_factory(extra_env=env)        # one at a time: the first creates the schema and admin
    b = server_factory(extra_env=env)
    assert a.admin_key and not b.admin_key   # the admin exists once, in the shared store
    return a, b


def test_admin_key_from_a_works_on_b(replicas):
    a, b = replicas
    h = {"Authorization": f"Bearer {a.admin_key}"}
    acct = httpx.post(a.url + "/admin/api/accounts", json={"name": f"rep-{uuid.uuid4().hex[:6]}"}, headers=h)
    assert acct.status_code == 201, acct.text
    issued = httpx.post(a.url + "/admin/api/credentials", headers=h,
                        json={"account_id": acct.json()["id"], "kind": "api_key", "label": "made on A"})
    assert issued.status_code == 201, issued.text
    key = issued.json()["secret"]
    r = httpx.post(b.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    # ...and B's admin API sees the account A created.
    seen = httpx.get(b.url + f"/admin/api/accounts/{acct.json()['id']}", headers=h)
    assert seen.status_code == 200 and seen.json()["name"] == acct.json()["name"]


def test_qianfan_token_from_a_works_on_b(replicas):
    a, b = replicas
    h = {"Authorization": f"Bearer {a.admin_key}"}
    acct = httpx.post(a.url + "/admin/api/accounts", json={"name": f"qf-rep-{uuid.uuid4().hex[:6]}"}, headers=h)
    account_id = acct.json()["id"]
    app = httpx.post(a.url + "/admin/api/credentials", headers=h,       # secret encrypted with the shared key
                     json={"account_id": account_id, "kind": "qianfan_app", "label": "app"}).json()
    svc = httpx.post(a.url + "/admin/api/services", headers=h,
                     json={"account_id": account_id, "endpoint": "rep", "model": MODEL, "kind": "chat"})
    assert svc.status_code == 201, svc.text
    endpoint = svc.json()["endpoint"]
    for issuer, user in ((a, b), (b, a)):
        tok = httpx.post(issuer.url + "/oauth/2.0/token", params={
            "grant_type": "client_credentials", "client_id": app["public_id"], "client_secret": app["secret"]})
        assert tok.status_code == 200, tok.text
        r = httpx.post(f"{user.url}{QF}/chat/{endpoint}", params={"access_token": tok.json()["access_token"]},
                       json={"messages": [{"role": "user", "content": "你好"}], "max_output_tokens": 4},
                       timeout=120)
        assert r.status_code == 200 and "error_code" not in r.json(), r.text


def test_sensenova_secret_written_by_a_verifies_on_b(replicas):
    """SenseNova JWTs are checked against the stored (encrypted) secret: replica B must
    decrypt what replica A's store encrypted, which only works with the shared key."""
    import time

    import jwt

    a, b = replicas
    h = {"Authorization": f"Bearer {a.admin_key}"}
    acct = httpx.post(a.url + "/admin/api/accounts", json={"name": f"sn-rep-{uuid.uuid4().hex[:6]}"}, headers=h)
    issued = httpx.post(a.url + "/admin/api/credentials", headers=h,
                        json={"account_id": acct.json()["id"], "kind": "sensenova", "label": "made on A"}).json()
    now = int(time.time())
    token = jwt.encode({"iss": issued["public_id"], "exp": now + 600, "nbf": now - 5}, issued["secret"],
                       algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})
    r = httpx.post(b.url + "/v1/llm/completions", headers={"Authorization": f"Bearer {token}"}, timeout=120,
                   json={"model": MODEL, "prompt": "Hello", "max_new_tokens": 3})
    assert r.status_code == 200, r.text


def test_requests_spread_over_both_get_one_usage_record_each(replicas):
    a, b = replicas
    acct, key = a.account(f"spread-{uuid.uuid4().hex[:6]}")

    def call(i: int):
        server = (a, b)[i % 2]
        body = {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0,
                "stream": i % 4 == 3}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=120,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r

    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(12)))
    records = a.platform.usage.records(account_id=acct.id, limit=100)
    assert len(records) == 12
    assert len({r["request_id"] for r in records}) == 12
    assert all(r["status"] == "ok" and r["completion_tokens"] >= 1 for r in records)
    # Both replicas read the same totals.
    assert b.platform.usage.records(account_id=acct.id, limit=100) == records


# -- the safety lexicon: a PUT on A is enforced on B within WHARF_LEXICON_REFRESH_S (2 s) ----

PROPAGATION_DEADLINE_S = 10


def _openai_prompt(server, key: str, prompt: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})


def _welm_prompt(server, key: str, prompt: str) -> httpx.Response:
    return httpx.post(server.url + "/welm/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      timeout=120, json={"model": MODEL, "prompt": prompt, "max_tokens": 1})


def _openai_blocked(r: httpx.Response) -> bool:
    if r.status_code == 200:
        return False
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "content_policy_violation", r.text
    return True


def _welm_blocked(r: httpx.Response) -> bool:
    if r.status_code == 200:
        return False
    assert r.status_code == 400, r.text
    assert r.json()["choices"][0]["finish_reason"] == "error: content policy violation", r.text
    return True


def _until(check, what: str) -> float:
    """Seconds until check() is true, polling; fails after PROPAGATION_DEADLINE_S."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > PROPAGATION_DEADLINE_S:
            pytest.fail(f"{what}: not within {PROPAGATION_DEADLINE_S} s")
        time.sleep(0.2)
    return time.monotonic() - start


def test_lexicon_put_on_a_is_enforced_on_b(replicas):
    a, b = replicas
    admin = {"Authorization": f"Bearer {a.admin_key}"}
    _, key = a.account(f"lex-rep-{uuid.uuid4().hex[:6]}")
    word = f"quokka{uuid.uuid4().hex[:6]}"
    prompt = f"Tell me about the {word} please"
    assert not _openai_blocked(_openai_prompt(b, key, prompt))
    try:
        r = httpx.put(a.url + "/admin/api/safety/lexicon", headers=admin, json={"terms": [word, "敏感词"]})
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert _openai_blocked(_openai_prompt(a, key, prompt))                 # A at once
        took = _until(lambda: _openai_blocked(_openai_prompt(b, key, prompt.upper())), "OpenAI block on B")
        assert _welm_blocked(_welm_prompt(b, key, "这是敏感词吗"))               # and in another dialect
        assert _welm_blocked(_welm_prompt(b, key, prompt))
        seen = httpx.get(b.url + "/admin/api/safety/lexicon", headers=admin).json()
        assert (seen["version"], seen["terms"]) == (version, [word, "敏感词"])
        print(f"lexicon reached B {took:.1f} s after the PUT on A")
    finally:
        r = httpx.put(a.url + "/admin/api/safety/lexicon", headers=admin, json={"terms": []})
        assert r.status_code == 200, r.text
    # Removing the word unblocks it on B too.
    _until(lambda: not _welm_blocked(_welm_prompt(b, key, prompt)), "WeLM unblock on B")
    assert not _openai_blocked(_openai_prompt(b, key, prompt))


# -- console sessions: signed in on A, used and ended on B ---------------------------------

def _console(server, method: str, path: str, sid: str, csrf: str | None = None, **kw) -> httpx.Response:
    headers = {"Cookie": f"wharf_console={sid}", **({"X-CSRF-Token": csrf} if csrf else {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def test_console_session_from_a_works_on_b_and_sign_out_on_b_ends_it_on_a(replicas):
    a, b = replicas
    acct, key = a.account(f"console-rep-{uuid.uuid4().hex[:6]}")
    r = httpx.post(a.url + "/console/session", json={"api_key": key}, timeout=30)
    assert r.status_code == 200, r.text
    sid, csrf = r.cookies["wharf_console"], r.json()["csrf"]
    assert key not in r.text
    # B knows the session: a read, and a state change with the CSRF token (refused without).
    me = _console(b, "GET", "/console/session", sid).json()
    assert me["signed_in"] is True and me["csrf"] == csrf and me["account"]["id"] == acct.id
    assert _console(b, "GET", "/console/api/admin/me", sid).json()["account"]["id"] == acct.id
    body = {"kind": "api_key", "label": "made through B's console"}
    assert _console(b, "POST", "/console/api/admin/credentials", sid, json=body).status_code == 403
    made = _console(b, "POST", "/console/api/admin/credentials", sid, csrf, json=body)
    assert made.status_code == 201, made.text
    assert _console(a, "GET", "/console/api/usage-series?days=1", sid).status_code == 200
    # Signed out on B: gone on A too.
    out = _console(b, "DELETE", "/console/session", sid, csrf)
    assert out.status_code == 200 and out.json() == {"signed_in": False}
    assert _console(a, "GET", "/console/session", sid).json() == {"signed_in": False}
    gone = _console(a, "GET", "/console/api/admin/me", sid)
    assert gone.status_code == 401 and gone.json()["error"]["type"] == "auth_error"
