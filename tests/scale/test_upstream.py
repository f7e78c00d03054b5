"""Upstream backend: a gateway `wharf serve --backend upstream` in front of a second, real
`wharf serve` (the upstream engine), and in front of a fake upstream on loopback that
hangs, refuses or goes away. Every dialect keeps working through the gateway, and the
gateway keeps its own accounts, usage and error mapping."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
import pytest

from tests.conftest import MODEL
from tests.loopback_http import LoopbackHTTP

PROMPT = "The capital of France is Paris. The capital of Germany is"
QF = "/rpc/2.0/ai_custom/v1/wenxinworkshop"


def _tokenizer_dir(model_cache_dir) -> str:
    from wharf.engine.loader import _gguf_cache_dir, embedded_model_path
    folder = _gguf_cache_dir(embedded_model_path(), model_cache_dir)
    return str(folder)


@pytest.fixture(scope="module")
def upstream(server_factory):
    return server_factory()


@pytest.fixture(scope="module")
def up_key(upstream):
    return upstream.account(f"gateway-{uuid.uuid4().hex[:6]}")[1]


@pytest.fixture(scope="module")
def gateway(server_factory, upstream, up_key, model_cache_dir):
    return server_factory(extra_env={
        "WHARF_BACKEND": "upstream", "WHARF_UPSTREAM_URL": upstream.url, "WHARF_UPSTREAM_API_KEY": up_key,
        "WHARF_UPSTREAM_TOKENIZER": _tokenizer_dir(model_cache_dir)})


@pytest.fixture(scope="module")
def gw_account(gateway):
    return gateway.account(f"client-{uuid.uuid4().hex[:6]}")


def _post(server, key, path, body, **kw):
    return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=kw.pop("timeout", 120), **kw)


def _sse(server, key, path, body) -> list[dict]:
    events = []
    with httpx.stream("POST", server.url + path, json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append(json.loads(line[5:]))
    return events


# -- discovery --------------------------------------------------------------------------

def test_models_come_from_the_upstream(gateway, gw_account, upstream, up_key):
    cards = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {gw_account[1]}"}).json()
    up = httpx.get(upstream.url + "/v1/models", headers={"Authorization": f"Bearer {up_key}"}).json()
    (card,) = [c for c in cards["data"] if c["id"] == MODEL]
    (up_card,) = [c for c in up["data"] if c["id"] == MODEL]
    assert card["backend"] == "upstream"
    assert card["root"] == up_card["root"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card["max_model_len"] == up_card["max_model_len"]
    stats = gateway.engine_stats()
    assert stats[MODEL]["backend"] == "upstream" and stats[MODEL]["running"] == 0


# -- OpenAI, stream and not, equal to the upstream's greedy output -------------------------

@pytest.mark.parametrize("path,extra", [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colours."}]}),
])
def test_openai_greedy_equals_upstream(gateway, gw_account, upstream, up_key, path, extra):
    body = {"model": MODEL, "max_tokens": 20, "temperature": 0, **extra}
    direct = _post(upstream, up_key, path, body)
    via = _post(gateway, gw_account[1], path, body)
    assert direct.status_code == 200 and via.status_code == 200, via.text
    d, v = direct.json(), via.json()
    text = (lambda j: j["choices"][0]["text"]) if "prompt" in extra else \
           (lambda j: j["choices"][0]["message"]["content"])
    assert text(v) == text(d) and text(v)
    assert v["choices"][0]["finish_reason"] == d["choices"][0]["finish_reason"]
    assert v["usage"] == d["usage"]          # exact: the gateway counts with the same tokenizer

    events = _sse(gateway, gw_account[1], path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    if "prompt" in extra:
        streamed = "".join(c["text"] for e in events for c in e["choices"])
    else:
        streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert streamed == text(d)
    assert events[-1]["usage"] == d["usage"]
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finishes == [d["choices"][0]["finish_reason"]]


def test_n_stop_and_seed_pass_through(gateway, gw_account, upstream, up_key):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "n": 3, "temperature": 0.8,
            "seed": 7, "stop": ["."]}
    d = _post(upstream, up_key, "/v1/completions", body).json()
    v = _post(gateway, gw_account[1], "/v1/completions", body).json()
    assert sorted(c["index"] for c in v["choices"]) == [0, 1, 2]
    assert [c["text"] for c in v["choices"]] == [c["text"] for c in d["choices"]]
    assert all("." not in c["text"] for c in v["choices"])
    assert v["usage"] == d["usage"]


def test_structured_output_and_tool_calls_through_the_gateway(gateway, gw_account):
    """response_format and tools through the real openai SDK to the gateway, which asks the
    upstream for JSON under the schema: what comes back parses and validates; a bad schema
    is the same 400 as on the embedded engine."""
    import jsonschema
    import openai

    from tests.api.test_openai_structured import SCHEMAS, TOOLS, City

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gw_account[1], max_retries=0, timeout=120)
    for prompt in ("请介绍一下北京。", "Describe the largest city in Japan."):
        choice = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                               response_format=City, max_tokens=120, temperature=0).choices[0]
        assert isinstance(choice.message.parsed, City)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert bad.value.body["param"] == "response_format"
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS,
        tool_choice="required", parallel_tool_calls=False, max_tokens=80, temperature=0).choices[0]
    assert answer.finish_reason == "tool_calls"
    (call,) = answer.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_logprobs_pass_through(gateway, gw_account):
    r = _post(gateway, gw_account[1], "/v1/completions",
              {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 4 and all(x <= 0 for x in lp["token_logprobs"])
    assert all(len(t) >= 1 for t in lp["top_logprobs"])


def test_window_checked_by_the_gateway(gateway, gw_account):
    r = _post(gateway, gw_account[1], "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


# -- the other dialects through the gateway ------------------------------------------------

def test_welm_through_gateway(gateway, gw_account):
    r = httpx.post(gateway.url + "/welm/v1/completions", headers={"Authorization": gw_account[1]},
                   json={"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_generation" and body["choices"][0]["text"]


def test_qianfan_through_gateway(gateway, gw_account):
    p = gateway.platform
    app = p.credentials.create(gw_account[0].id, "qianfan_app", label="app")
    endpoint = p.services.create(gw_account[0].id, "gwchat", MODEL, "chat", "through the gateway").endpoint
    tok = httpx.post(gateway.url + "/oauth/2.0/token", params={
        "grant_type": "client_credentials", "client_id": app.public_id, "client_secret": app.secret}).json()
    r = httpx.post(f"{gateway.url}{QF}/chat/{endpoint}", params={"access_token": tok["access_token"]},
                   json={"messages": [{"role": "user", "content": "你好"}], "max_output_tokens": 8}, timeout=120)
    assert r.status_code == 200 and "error_code" not in r.json(), r.text
    assert r.json()["result"] and r.json()["usage"]["completion_tokens"] >= 1


def _sensenova_token(ak, sk):
    now = int(time.time())
    return jwt.encode({"iss": ak, "exp": now + 1800, "nbf": now - 5}, sk, algorithm="HS256",
                      headers={"alg": "HS256", "typ": "JWT"})


def test_sensenova_through_gateway(gateway, gw_account):
    issued = gateway.platform.credentials.create(gw_account[0].id, "sensenova", label="sn")
    r = httpx.post(gateway.url + "/v1/llm/completions",
                   headers={"Authorization": f"Bearer {_sensenova_token(issued.public_id, issued.secret)}"},
                   json={"model": MODEL, "prompt": PROMPT, "max_new_tokens": 8}, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["choices"][0]["text"] and data["usage"]["completion_tokens"] >= 1


def test_usage_is_recorded_on_the_gateway(gateway, upstream, up_key):
    acct, key = gateway.account(f"usage-{uuid.uuid4().hex[:6]}")
    for _ in range(2):
        assert _post(gateway, key, "/v1/completions",
                     {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}).status_code == 200
    _sse(gateway, key, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "stream": True})
    records = gateway.platform.usage.records(account_id=acct.id)
    assert len(records) == 3
    assert all(r["status"] == "ok" and r["completion_tokens"] == 6 and r["prompt_tokens"] > 1
               and r["dialect"] == "openai" for r in records)
    assert len({r["request_id"] for r in records}) == 3


# -- cancellation ----------------------------------------------------------------------------

def _running(server) -> int:
    return server.engine_stats()[MODEL]["running"]


def test_cancel_mid_stream_frees_the_upstream(gateway, gw_account, upstream):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {gw_account[1]}"}, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()          # kept alive: leaving iter_lines() early closes the connection
        got = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert got and all('"error"' not in line for line in got), got
        assert _running(upstream) == 1 and _running(gateway) == 1
        r.close()                       # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while (_running(upstream) or _running(gateway)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(upstream) == 0 and _running(gateway) == 0
    time.sleep(0.5)
    rec = gateway.platform.usage.records(account_id=gw_account[0].id, limit=1)[0]
    assert rec["status"] == "cancelled" and 0 < rec["completion_tokens"] < 1500


# -- a fake upstream that hangs, rejects, or is gone -----------------------------------------

class FakeUpstream(LoopbackHTTP):
    """Lists two models; `slow-model` requests are accepted and never answered;
    `bad-model` requests get a vLLM-style 400."""

    async def respond(self, head: bytes, body: bytes):
        if head.startswith(b"GET /v1/models"):
            return b"200 OK", b"application/json", json.dumps({"object": "list", "data": [
                {"id": "slow-model", "object": "model", "root": "fake/slow", "max_model_len": 4096},
                {"id": "bad-model", "object": "model", "root": "fake/bad"}]}).encode()
        if b'"bad-model"' in body:
            return b"400 Bad Request", b"application/json", json.dumps({
                "object": "error", "message": "top_k must be -1 or at least 1, got 7000.",
                "type": "BadRequestError", "code": 400}).encode()
        return None


@pytest.fixture(scope="module")
def fake():
    f = FakeUpstream()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def gw2(server_factory, fake):
    """A gateway without a tokenizer (estimated prompt sizes) and a 2 s request deadline."""
    return server_factory(extra_env={"WHARF_BACKEND": "upstream", "WHARF_UPSTREAM_URL": fake.url,
                                     "WHARF_REQUEST_TIMEOUT_S": "2"})


@pytest.fixture(scope="module")
def gw2_creds(gw2):
    acct, key = gw2.account(f"c2-{uuid.uuid4().hex[:6]}")
    p = gw2.platform
    app = p.credentials.create(acct.id, "qianfan_app", label="app")
    sn = p.credentials.create(acct.id, "sensenova", label="sn")
    endpoint = p.services.create(acct.id, "slow", "slow-model", "completions", "fake upstream").endpoint
    return {"acct": acct, "key": key, "app": app, "sn": sn, "endpoint": endpoint}


def test_estimated_window_and_upstream_400(gw2, gw2_creds):
    cards = httpx.get(gw2.url + "/v1/models", headers={"Authorization": f"Bearer {gw2_creds['key']}"}).json()
    lens = {c["id"]: c["max_model_len"] for c in cards["data"]}
    assert lens == {"slow-model": 4096, "bad-model": 2048}        # the upstream's, else WHARF_MAX_MODEL_LEN
    r = _post(gw2, gw2_creds["key"], "/v1/completions", {"model": "bad-model", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert "top_k must be -1" in r.json()["error"]["message"]


def test_slow_upstream_is_504(gw2, gw2_creds):
    started = time.monotonic()
    r = _post(gw2, gw2_creds["key"], "/v1/completions", {"model": "slow-model", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 10
    r = httpx.post(gw2.url + "/welm/v1/completions", headers={"Authorization": gw2_creds["key"]},
                   json={"model": "slow-model", "prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 504, r.text
    recs = gw2.platform.usage.records(account_id=gw2_creds["acct"].id, limit=2)
    assert {r["status"] for r in recs} == {"error:timeout"}


def test_cli_model_selection_and_unreachable_upstream(server_factory, fake, tmp_path):
    import subprocess
    import sys
    gw = server_factory(args=["--backend", "upstream", "--upstream-url", fake.url, "--model", "fast=slow-model"])
    _, key = gw.account("cli")
    ids = [c["id"] for c in httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]]
    assert ids == ["fast"]
    r = subprocess.run([sys.executable, "-m", "wharf", "serve", "--backend", "upstream", "--upstream-url",
                        "http://127.0.0.1:9", "--port", "1"], env={"WHARF_DATA_DIR": str(tmp_path),
                       "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot reach upstream http://127.0.0.1:9" in r.stderr


def test_upstream_down_is_503_in_every_dialect(gw2, gw2_creds, fake):
    fake.stop()
    key = gw2_creds["key"]
    r = _post(gw2, key, "/v1/completions", {"model": "slow-model", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text

    # Streamed too: refused before any stream starts, so SDKs retry it (issue 15, finding 13).
    r = _post(gw2, key, "/v1/chat/completions", {"model": "slow-model", "stream": True, "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text

    r = httpx.post(gw2.url + "/welm/v1/completions", headers={"Authorization": key},
                   json={"model": "slow-model", "prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 503, r.text

    app = gw2_creds["app"]
    tok = httpx.post(gw2.url + "/oauth/2.0/token", params={
        "grant_type": "client_credentials", "client_id": app.public_id, "client_secret": app.secret}).json()
    r = httpx.post(f"{gw2.url}{QF}/completions/{gw2_creds['endpoint']}",
                   params={"access_token": tok["access_token"]}, json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 200 and r.json()["error_code"] == 336100, r.text

    sn = gw2_creds["sn"]
    r = httpx.post(gw2.url + "/v1/llm/completions",
                   headers={"Authorization": f"Bearer {_sensenova_token(sn.public_id, sn.secret)}"},
                   json={"model": "slow-model", "prompt": "hi", "max_new_tokens": 4}, timeout=30)
    assert r.status_code == 503, r.text
    assert gw2.proc.poll() is None          # the gateway itself is fine
