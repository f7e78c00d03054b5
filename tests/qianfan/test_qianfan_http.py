"""Raw HTTP against a live server: the seeds' own curl examples, exact wire shapes, every
parameter rule and error code of the Qianfan dialect, usage records."""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import httpx
import pytest
from qianfan.resources.auth.iam import iam_sign
from qianfan.resources.typing import QfRequest

from tests.qianfan.conftest import PREFIX, get_token, make_account


def _url(server, kind: str, endpoint: str) -> str:
    return f"{server.url}{PREFIX}/{kind}/{endpoint}"


def _post(server, kind, endpoint, token, body, **kw) -> httpx.Response:
    return httpx.post(_url(server, kind, endpoint), params={"access_token": token},
                      content=body if isinstance(body, (str, bytes)) else json.dumps(body), timeout=60, **kw)


def _signed_headers(server, path: str, ak: str, sk: str, method="POST") -> dict:
    req = QfRequest(method=method, url=path,
                    headers={"Content-Type": "application/json", "Host": urlparse(server.url).netloc})
    iam_sign(ak, sk, req)
    return dict(req.headers)


@pytest.fixture(scope="module")
def acct(server):
    return make_account(server)


@pytest.fixture(scope="module")
def token(server, acct):
    return get_token(server, acct.app_ak, acct.app_sk)


# -- OAuth ------------------------------------------------------------------------------

def test_token_like_the_seed_curl(server, acct):
    """`curl 'https://.../oauth/2.0/token?grant_type=client_credentials&client_id=..&client_secret=..'`
    is a GET; the seeds' Python example POSTs with a JSON body `""`."""
    q = f"grant_type=client_credentials&client_id={acct.app_ak}&client_secret={acct.app_sk}"
    r = httpx.get(f"{server.url}/oauth/2.0/token?{q}")
    assert r.status_code == 200
    body = r.json()
    for key in ("access_token", "expires_in", "refresh_token", "scope", "session_key", "session_secret"):
        assert key in body
    assert body["expires_in"] >= 86400
    r = httpx.post(f"{server.url}/oauth/2.0/token?{q}", content=json.dumps(""),
                   headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert r.status_code == 200 and r.json()["access_token"] != body["access_token"]


def test_token_failures(server, acct):
    url = f"{server.url}/oauth/2.0/token"
    r = httpx.post(url, params={"grant_type": "client_credentials", "client_id": "nope", "client_secret": "x"})
    assert r.json() == {"error": "invalid_client", "error_description": "unknown client id"}
    r = httpx.post(url, params={"grant_type": "client_credentials", "client_id": acct.app_ak,
                                "client_secret": "wrong"})
    assert r.json() == {"error": "invalid_client", "error_description": "Client authentication failed"}
    r = httpx.post(url, params={"grant_type": "password", "client_id": acct.app_ak, "client_secret": acct.app_sk})
    assert r.json()["error"] == "unsupported_grant_type"


# -- the seeds' requests ---------------------------------------------------------------

def test_seed_completion_curl(server, acct, token):
    # curl -X POST '.../completions/[API名称]?access_token=..' -d '{"prompt":"Introduce the city Beijing"}'
    # (curl -d sends application/x-www-form-urlencoded; max_output_tokens keeps the test short)
    r = _post(server, "completions", acct.completions, token,
              '{"prompt":"Introduce the city Beijing", "max_output_tokens": 12}',
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"id", "object", "created", "result", "is_safe", "usage", "is_truncated",
                         "need_clear_history"}
    assert "error_code" not in body and body["object"] == "completion" and body["is_safe"] == 1
    assert body["id"].startswith("as-") and len(body["id"]) == 13
    assert body["usage"]["completion_tokens"] <= 12
    if body["usage"]["completion_tokens"] == 12:
        assert body["is_truncated"] is True


def test_seed_completion_stream_framing(server, acct, token):
    r = _post(server, "completions", acct.completions, token,
              {"prompt": "Introduce the city Beijing", "stream": True, "max_output_tokens": 10})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.content.decode("utf-8")
    assert raw.endswith("\n\n") and "\r" not in raw
    events = raw.split("\n\n")[:-1]
    assert events and all(e.startswith("data: {") and "\n" not in e for e in events)
    chunks = [json.loads(e[len("data: "):]) for e in events]
    assert [c["sentence_id"] for c in chunks] == list(range(len(chunks)))
    assert chunks[-1]["is_end"] is True and not any(c["is_end"] for c in chunks[:-1])
    for c in chunks:
        assert set(c) >= {"id", "object", "created", "sentence_id", "is_end", "is_truncated", "result",
                          "need_clear_history", "usage"}
        assert c["usage"] is not None and "error_code" not in c
    # token-incremental: one chunk per engine chunk, usage running up
    assert len(chunks) >= 3
    done = [c["usage"]["completion_tokens"] for c in chunks]
    assert done == sorted(done) and done[-1] <= 10


def test_seed_chat_single_and_multi_turn(server, acct, token):
    r = _post(server, "chat", acct.chat, token,
              {"messages": [{"role": "user", "content": "Please introduce The Great Wall"}], "max_output_tokens": 8})
    body = r.json()
    assert body["object"] == "chat.completion" and "error_code" not in body and body["result"]
    assert body["is_truncated"] in (True, False) and body["need_clear_history"] is False
    r = _post(server, "chat", acct.chat, token, {"messages": [
        {"role": "user", "content": "Please introduce The Great Wall"},
        {"role": "assistant", "content": "The Great Wall of China is an ancient series of fortifications."},
        {"role": "user", "content": "Please introduce Beijing"}], "max_output_tokens": 8,
        "system": "You are a helpful tour guide.", "extra_parameters": {"request_source": "x"}})
    assert "error_code" not in r.json() and r.json()["usage"]["completion_tokens"] <= 8


def test_chat_stream_chinese_utf8(server, acct, token):
    r = _post(server, "chat", acct.chat, token,
              {"messages": [{"role": "user", "content": "用中文说你好"}], "stream": True, "max_output_tokens": 16})
    raw = r.content.decode("utf-8")          # would raise on a split UTF-8 sequence
    chunks = [json.loads(e[6:]) for e in raw.split("\n\n")[:-1]]
    assert chunks[-1]["is_end"] and all("\ufffd" not in c["result"] for c in chunks)


# -- parameter rules -------------------------------------------------------------------

@pytest.mark.parametrize("kind,extra,code,field", [
    ("completions", {"temperature": 0}, 336003, "temperature"),
    ("completions", {"temperature": 1.01}, 336003, "temperature"),
    ("completions", {"temperature": "hot"}, 336001, "temperature"),
    ("completions", {"top_p": -0.1}, 336003, "top_p"),
    ("completions", {"top_p": 1.1}, 336003, "top_p"),
    ("completions", {"top_k": 0}, 336003, "top_k"),
    ("completions", {"top_k": 2.5}, 336003, "top_k"),
    ("completions", {"penalty_score": 0.99}, 336003, "penalty_score"),
    ("completions", {"penalty_score": 2.01}, 336003, "penalty_score"),
    ("completions", {"stop": ["a", "b", "c", "d", "e"]}, 336003, "stop"),
    ("completions", {"stop": ["x" * 21]}, 336003, "stop"),
    ("completions", {"stop": [1]}, 336001, "stop"),
    ("completions", {"user_id": 5}, 336001, "user_id"),
    ("completions", {"prompt": None}, 336001, "prompt"),
    ("completions", {"prompt": ["a"]}, 336001, "prompt"),
    ("completions", {"prompt": ""}, 336003, "prompt"),
    ("completions", {"max_output_tokens": 0}, 336003, "max_output_tokens"),
    ("chat", {"messages": []}, 336003, "messages"),
    ("chat", {"messages": None}, 336001, "messages"),
    ("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     336003, "messages"),
    ("chat", {"messages": [{"role": "assistant", "content": "a"}]}, 336003, "role"),
    ("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                           {"role": "user", "content": "c"}]}, 336003, "role"),
    ("chat", {"messages": [{"role": "user", "content": "  "}]}, 336003, "content"),
    ("chat", {"messages": [{"role": "user"}]}, 336001, "messages[0]"),
    ("chat", {"messages": [{"role": "user", "content": "a"}], "system": 3}, 336001, "system"),
])
def test_parameter_rules(server, acct, token, kind, extra, code, field):
    base = {"prompt": "hi"} if kind == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
    body = {**base, "max_output_tokens": 4, **extra}
    body = {k: v for k, v in body.items() if v is not None}
    r = _post(server, kind, acct.completions if kind == "completions" else acct.chat, token, body)
    assert r.status_code == 200
    out = r.json()
    assert out["error_code"] == code and field in out["error_msg"], out
    assert out["id"].startswith("as-") and "usage" not in out


def test_valid_edges_accepted(server, acct, token):
    r = _post(server, "completions", acct.completions, token,
              {"prompt": "hi", "max_output_tokens": 2, "temperature": 1, "top_p": 0, "top_k": 1,
               "penalty_score": 2, "stop": ["a" * 20, "b", "c", "d"], "user_id": "u", "unknown_key": [1]})
    assert "error_code" not in r.json(), r.json()


def test_completions_prompt_as_one_user_message(server, acct, token):
    """The Node.js SDK sends a Completions call as {"messages": [one user message]}, no prompt."""
    r = _post(server, "completions", acct.completions, token,
              {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2})
    assert "error_code" not in r.json() and r.json()["object"] == "completion", r.json()
    for messages in ([{"role": "assistant", "content": "hi"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]):
        r = _post(server, "completions", acct.completions, token, {"messages": messages, "max_output_tokens": 2})
        assert r.json()["error_code"] == 336001 and "prompt" in r.json()["error_msg"], r.json()
    r = _post(server, "completions", acct.completions, token, {"messages": [{"role": "user", "content": ""}]})
    assert r.json()["error_code"] == 336003


def test_invalid_json(server, acct, token):
    r = _post(server, "completions", acct.completions, token, '{"prompt": ')
    assert r.status_code == 200 and r.json()["error_code"] == 336002
    r = _post(server, "chat", acct.chat, token, '[1, 2]')
    assert r.json()["error_code"] == 336002


# -- authentication and services -------------------------------------------------------

def test_token_errors(server, acct):
    r = _post(server, "completions", acct.completions, "24.not-a-token", {"prompt": "hi"})
    assert r.status_code == 200
    assert r.json()["error_code"] == 110 and r.json()["error_msg"] == "Access token invalid or no longer valid"
    r = httpx.post(_url(server, "completions", acct.completions), json={"prompt": "hi"})
    assert r.json()["error_code"] == 110


def test_iam_signature_raw(server, acct):
    path = f"{PREFIX}/completions/{acct.completions}"
    body = json.dumps({"prompt": "hi", "max_output_tokens": 2})
    h = _signed_headers(server, path, acct.iam_ak, acct.iam_sk)
    r = httpx.post(server.url + path, headers=h, content=body)
    assert "error_code" not in r.json(), r.json()
    # tampered signature
    h = _signed_headers(server, path, acct.iam_ak, acct.iam_sk)
    sig = h["Authorization"][-64:]
    h["Authorization"] = h["Authorization"][:-64] + ("0" if sig[0] != "0" else "1") + sig[1:]
    r = httpx.post(server.url + path, headers=h, content=body)
    assert r.status_code == 200 and r.json()["error_code"] == 14
    # signed for another path
    h = _signed_headers(server, f"{PREFIX}/completions/other", acct.iam_ak, acct.iam_sk)
    assert httpx.post(server.url + path, headers=h, content=body).json()["error_code"] == 14
    # expired signature: timestamp an hour ago, expiration 1800 s
    h = _signed_headers(server, path, acct.iam_ak, acct.iam_sk)
    parts = h["Authorization"].split("/")
    parts[2] = "2020-01-01T00:00:00Z"
    h["Authorization"] = "/".join(parts)
    assert httpx.post(server.url + path, headers=h, content=body).json()["error_code"] == 14


def test_service_list_raw(server, acct):
    path = "/wenxinworkshop/service/list"
    h = _signed_headers(server, path, acct.iam_ak, acct.iam_sk)
    r = httpx.post(server.url + path, headers=h, content=json.dumps({"apiTypefilter": ["chat"]}))
    common = r.json()["result"]["common"]
    assert [s["name"] for s in common] == [acct.chat] and common[0]["apiType"] == "chat"
    h = _signed_headers(server, path, acct.iam_ak, "0" * 32)
    assert httpx.post(server.url + path, headers=h, content="{}").json()["error_code"] == 14


def test_two_accounts_both_choose_test1(server):
    """Seed 001/004: the API address typed, "test1", gets a random prefix; each account calls
    its own prefixed endpoint, and service/list shows it (name and url), every field a string."""
    p, path = server.platform, "/wenxinworkshop/service/list"
    seen = set()
    for _ in range(2):
        a = make_account(server)
        svc = p.services.create(a.account_id, "test1", "smollm2-135m-instruct", "chat")
        assert re.fullmatch(r"[a-z0-9]{8}_test1", svc.endpoint) and svc.endpoint not in seen
        seen.add(svc.endpoint)
        tok = get_token(server, a.app_ak, a.app_sk)
        r = _post(server, "chat", svc.endpoint, tok, {"messages": [{"role": "user", "content": "你好"}],
                                                      "max_output_tokens": 2})
        assert "error_code" not in r.json() and r.headers["Content-Type"] == "application/json"
        assert _post(server, "chat", "test1", tok, {"messages": [{"role": "user", "content": "你好"}]}) \
            .json()["error_code"] == 336005
        h = _signed_headers(server, path, a.iam_ak, a.iam_sk)
        listed = [e for e in httpx.post(server.url + path, headers=h, content="{}").json()["result"]["common"]
                  if e["name"] == svc.endpoint]
        assert listed and listed[0]["url"] == _url(server, "chat", svc.endpoint)
        assert all(isinstance(v, str) for v in listed[0].values() if not isinstance(v, list))


def test_services_errors(server, acct, token):
    other = make_account(server)
    r = _post(server, "completions", other.completions, token, {"prompt": "hi"})
    assert r.json()["error_code"] == 336004
    r = _post(server, "completions", "no_such_endpoint", token, {"prompt": "hi"})
    assert r.json()["error_code"] == 336005
    r = _post(server, "chat", acct.completions, token, {"messages": [{"role": "user", "content": "hi"}]})
    assert r.json()["error_code"] == 336005
    r = _post(server, "completions", acct.chat, token, {"prompt": "hi"})
    assert r.json()["error_code"] == 336005


def test_usage_recorded_once(server):
    a = make_account(server)
    tok = get_token(server, a.app_ak, a.app_sk)
    ok = _post(server, "completions", a.completions, tok, {"prompt": "hi", "max_output_tokens": 3}).json()
    _post(server, "completions", a.completions, tok, {"prompt": "hi", "temperature": 5})
    _post(server, "chat", a.chat, tok, {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                        "max_output_tokens": 3})
    recs = list(reversed(server.platform.usage.records(a.account_id)))
    assert [r["status"] for r in recs] == ["ok", "error:invalid_param", "ok"]
    assert all(r["dialect"] == "qianfan" and r["credential_id"] == a.app_cred_id for r in recs)
    assert recs[0]["completion_tokens"] == ok["usage"]["completion_tokens"]
    assert recs[0]["prompt_tokens"] == ok["usage"]["prompt_tokens"]


def test_rate_limits_and_headers(server):
    p = server.platform
    a = make_account(server)
    p.services.update(p.services.get_by_endpoint(a.completions).id, rpm=2, tpm=10_000)
    tok = get_token(server, a.app_ak, a.app_sk)
    r1 = _post(server, "completions", a.completions, tok, {"prompt": "hi", "max_output_tokens": 2})
    assert "error_code" not in r1.json()
    assert float(r1.headers["X-Ratelimit-Limit-Requests"]) == 2
    assert int(r1.headers["X-Ratelimit-Limit-Tokens"]) == 10_000
    _post(server, "completions", a.completions, tok, {"prompt": "hi", "max_output_tokens": 2})
    r3 = _post(server, "completions", a.completions, tok, {"prompt": "hi", "max_output_tokens": 2})
    assert r3.status_code == 200 and r3.json()["error_code"] == 336501
    # TPM: a request larger than the bucket is admitted when it is full, and drains it
    p.services.update(p.services.get_by_endpoint(a.chat).id, tpm=5)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 4}
    assert "error_code" not in _post(server, "chat", a.chat, tok, chat).json()
    r = _post(server, "chat", a.chat, tok, chat)
    assert r.json()["error_code"] == 336502 and r.headers["X-Ratelimit-Limit-Tokens"] == "5"


def test_daily_quota(server):
    p = server.platform
    acct = p.accounts.create("qf-quota-acct", quota_tokens_per_day=5)
    app = p.credentials.create(acct.id, "qianfan_app")
    svc = p.services.create(acct.id, "qfquota_svc", "smollm2-135m-instruct", "completions")
    tok = get_token(server, app.public_id, app.secret)
    r = _post(server, "completions", svc.endpoint, tok, {"prompt": "hello there", "max_output_tokens": 20})
    assert r.json()["error_code"] == 17
