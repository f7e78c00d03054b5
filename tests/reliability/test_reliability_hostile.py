"""Item 5: hostile input, rejected cleanly in the caller's dialect, in all four dialects.

A server with a small WHARF_MAX_BODY_BYTES (64 KiB). Every case must come back as an
error in the dialect's own shape (OpenAI 4xx {"error"}, Qianfan 200 {"error_code"},
WeLM 4xx finish_reason "error: ...", SenseNova 4xx {"error": {"code"}}), never a 5xx,
never a hang, and the server must stay healthy with no traceback in its log.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MODEL
from tests.reliability.rel_clients import DIALECTS, error_code, is_error, provision, request_for

pytestmark = pytest.mark.slow
MAX_BODY = 65536


@pytest.fixture(scope="module")
def hostile(server_factory):
    server = server_factory(extra_env={"WHARF_MAX_BODY_BYTES": str(MAX_BODY)})
    return server, {d: provision(server, d) for d in DIALECTS}


def _base(acct) -> dict:
    return request_for(acct, max_tokens=4)[4]


# Numeric fields per dialect: output length, choices, temperature.
FIELDS = {
    "openai": ("max_tokens", "n", "temperature"),
    "welm": ("max_tokens", "n", "temperature"),
    "sensenova": ("max_new_tokens", "n", "temperature"),
    "qianfan": ("max_output_tokens", None, "temperature"),
}


def _case(name: str, acct) -> tuple[bytes, str]:
    """(raw body, content type) of one hostile case for this dialect."""
    d = acct.dialect
    body = _base(acct)
    out_len, n_field, temp = FIELDS[d]
    j = "application/json"
    if name == "oversized":
        return json.dumps({**body, "pad": "x" * (MAX_BODY + 10)}).encode(), j
    if name == "deeply_nested":
        depth = 20000
        return (b'{"model": "' + MODEL.encode() + b'", "x": ' + b"[" * depth + b"]" * depth + b"}"), j
    if name == "wrong_content_type":
        return b"model=" + MODEL.encode() + b"&prompt=hi", "application/x-www-form-urlencoded"
    if name == "invalid_utf8":
        return json.dumps(body).encode().replace(b"Say hello", b"Say \xff\xfe\xc3"), j
    if name == "not_an_object":
        return b'["model", "prompt"]', j
    if name == "huge_n":
        return json.dumps({**body, (n_field or out_len): 10**9}).encode(), j
    if name == "huge_max_tokens":
        return json.dumps({**body, out_len: 10**15}).encode(), j
    if name == "negative":
        return json.dumps({**body, out_len: -5}).encode(), j
    if name == "nan":
        return json.dumps({**body, temp: 0.5}).encode().replace(b"0.5", b"NaN"), j
    if name == "infinity":
        return json.dumps({**body, temp: 0.5}).encode().replace(b"0.5", b"Infinity"), j
    if name == "overflow_float":
        return json.dumps({**body, temp: 0.5}).encode().replace(b"0.5", b"1e999"), j
    if name == "many_stops":
        stop = "".join(chr(0x4E00 + i) for i in range(10_000)) if d == "welm" else [f"s{i}" for i in range(10_000)]
        return json.dumps({**body, "stop": stop}).encode(), j
    if name == "long_prompt":
        text = "hello " * 9000           # ~54 KB, far past the 2048-token window
        if d in ("openai", "qianfan"):
            return json.dumps({**body, "messages": [{"role": "user", "content": text}]}).encode(), j
        return json.dumps({**body, "prompt": text}).encode(), j
    if name == "wrong_types":
        return json.dumps({**body, out_len: "ten", temp: [1]}).encode(), j
    raise ValueError(name)


CASES = ["oversized", "deeply_nested", "wrong_content_type", "invalid_utf8", "not_an_object", "huge_n",
         "huge_max_tokens", "negative", "nan", "infinity", "overflow_float", "many_stops", "long_prompt",
         "wrong_types"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", CASES)
def test_hostile_input_rejected_in_dialect(hostile, dialect, case):
    server, accounts = hostile
    acct = accounts[dialect]
    method, path, params, headers, _ = request_for(acct)
    raw, ctype = _case(case, acct)
    r = httpx.request(method, server.url + path, params=params, content=raw,
                      headers={**headers, "Content-Type": ctype}, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert is_error(dialect, r), (r.status_code, r.headers.get("content-type"), r.text[:300])
    if case == "oversized":
        assert error_code(dialect, r) == {"openai": 413, "qianfan": 336001, "welm": 400, "sensenova": 400}[dialect]


def test_oversized_body_refused_without_reading_it(hostile):
    """A declared Content-Length far beyond the limit is refused up front (not buffered)."""
    server, accounts = hostile
    acct = accounts["openai"]

    def gen():
        yield b'{"model": "x", "pad": "'
        for _ in range(64):                   # 64 MiB if the server read it all
            yield b"x" * (1 << 20)
        yield b'"}'
    r = httpx.post(server.url + "/v1/chat/completions", content=gen(), timeout=60,
                   headers={"Authorization": f"Bearer {acct.key}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_server_healthy_after_hostile_input(hostile):
    server, accounts = hostile
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    for d in DIALECTS:
        method, path, params, headers, body = request_for(accounts[d], max_tokens=4)
        r = httpx.request(method, server.url + path, params=params, headers=headers, json=body, timeout=60)
        assert r.status_code == 200 and not is_error(d, r), (d, r.text[:300])
    assert "Traceback" not in server.log(), server.log()[-3000:]
