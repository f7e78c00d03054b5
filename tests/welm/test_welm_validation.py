"""WeLM dialect (seed 000): shape, auth, parameter ranges, the 2048 window, limits, quota
and usage records, over HTTP against the in-process app (tests/inproc.py: `wharf serve`'s
app on the scripted engine, the real tokenizer). What needs the model's own text (greedy
equal to OpenAI's, echo, stop characters, the lexicon on output) is test_welm_api.py."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.conftest import MODEL
from tests.welm.test_welm_api import PATH, PROMPT, post
from wharf import errors as E
from wharf.api.welm import welm_error


@pytest.fixture(scope="module")
def key(inproc):
    return inproc.account("welm-tests")[1]


@pytest.fixture(scope="module")
def client(inproc):
    return inproc.client


# -- shape, defaults, auth ---------------------------------------------------------------

def test_response_shape_and_defaults(client, key):
    r = post(client, key, {"model": MODEL, "prompt": PROMPT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices"}
    uuid.UUID(body["id"])
    assert body["object"] == "text_generation"
    assert isinstance(body["created"], int) and body["model"] == MODEL
    assert len(body["choices"]) == 1                       # n defaults to 1
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["logprobs"] == 0
    assert choice["finish_reason"] in ("finished", "length")
    assert not choice["text"].startswith(PROMPT)           # echo defaults to false



def test_bearer_prefix_optional(client, key):
    for bare in (False, True):
        r = post(client, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, bare=bare)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer wk-not-a-key", "wk-not-a-key"])
def test_bad_or_missing_token_is_401(client, auth):
    headers = {} if auth is None else {"Authorization": auth}
    r = client.post(PATH, json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, headers=headers)
    assert r.status_code == 401
    assert r.json()["choices"][0]["finish_reason"] == "error: invalid token"


def test_unknown_model_is_invalid_parameter(client, key):
    r = post(client, key, {"model": "no-such-model", "prompt": "Hi"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["param"] == "model"
    assert body["choices"][0]["finish_reason"].startswith("error: invalid parameter model")


def test_model_alias_xl_not_registered_by_default_is_400(client, key):
    # the seed's names (medium/large/xl) are aliases an operator registers; unknown ones are 400
    r = post(client, key, {"model": "xl", "prompt": "Hi"})
    assert r.status_code == 400


# -- ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("model", None), ("model", 5), ("model", ""),
    ("prompt", 5), ("prompt", ["a"]),
    ("max_tokens", 0), ("max_tokens", 1025), ("max_tokens", -1), ("max_tokens", "16"), ("max_tokens", 1.5),
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "0.5"),
    ("top_p", -0.01), ("top_p", 1.01),
    ("top_k", -1), ("top_k", 1.5),
    ("n", 0), ("n", 13), ("n", True),
    ("echo", "yes"), ("echo", 1),
    ("stop", 5), ("stop", [".", ","]),
])
def test_invalid_parameter_is_400_naming_it(client, key, field, value):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    if value is None:
        body.pop(field)
    else:
        body[field] = value
    r = client.post(PATH, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["error"]["param"] == field
    assert out["choices"][0]["finish_reason"].startswith(f"error: invalid parameter {field}")


def test_not_json_is_400(client, key):
    r = client.post(PATH, content=b"{nope", headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["choices"][0]["finish_reason"].startswith("error: invalid parameter")


@pytest.mark.parametrize("field,value", [("temperature", 2), ("top_p", 0), ("top_p", 1), ("top_k", 0),
                                         ("top_k", 10), ("max_tokens", 1), ("prompt", "")])
def test_boundaries_accepted(client, key, field, value):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, field: value}
    r = client.post(PATH, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text


def test_seed_example_body(client, key):
    """The seed's curl body, with the model name swapped for a registered one."""
    r = post(client, key, {"prompt": "测试", "model": MODEL, "max_tokens": 16, "temperature": 0.0,
                           "top_p": 0.0, "top_k": 10, "n": 1, "echo": False, "stop": ",,.。"})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert not set(text) & set(",,.。")



# -- the 2048 window -------------------------------------------------------------------------

def test_prompt_plus_max_tokens_at_most_2048(inproc, client, key):
    """The 2048 check runs before the policy path: a request exactly at 2048 passes it and
    reaches the quota (a 1-character daily quota refuses it, so no 1,100-token prefill is
    paid for), one token more is a 400 naming max_tokens and 2048."""
    long_prompt = "apple banana cherry " * 380
    probe = post(client, key, {"model": MODEL, "prompt": long_prompt, "max_tokens": 1024})
    assert probe.status_code == 400, probe.text
    p = int(re.search(r"\((\d+) in the prompt", probe.json()["error"]["message"]).group(1))
    assert 1024 < p < 2047, p
    room = 2048 - p
    _, tight = inproc.account("welm-window", quota_chars_per_day=1)
    over = post(client, tight, {"model": MODEL, "prompt": long_prompt, "max_tokens": room + 1})
    assert over.status_code == 400, over.text
    assert over.json()["error"]["param"] == "max_tokens"
    assert "2048" in over.json()["choices"][0]["finish_reason"]
    at = post(client, tight, {"model": MODEL, "prompt": long_prompt, "max_tokens": room})
    assert (at.status_code, at.text) == (429, "quota limit exceed")


def test_max_tokens_1024_with_long_prompt_is_400(client, key):
    r = post(client, key, {"model": MODEL, "prompt": "你好" * 700, "max_tokens": 1024})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"


# -- limits, quota, usage ------------------------------------------------------------------

def test_rate_limit_body_exact(inproc, client):
    _, k = inproc.account("welm-rpm", rpm=1)
    assert post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200
    r = post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 429
    assert r.text == "rate limit exceeded"
    assert r.headers["content-type"].startswith("text/plain")


def test_quota_body_exact(inproc, client):
    _, k = inproc.account("welm-quota", quota_chars_per_day=4)
    r = post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 16})
    assert r.status_code == 429
    assert r.text == "quota limit exceed"


def test_usage_recorded_once_for_rejected_and_served(inproc, client):
    acct, k = inproc.account("welm-usage")
    post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 0})          # invalid
    post(client, k, {"model": "nope", "prompt": "Hi"})                           # unknown model
    post(client, k, {"model": MODEL, "prompt": "x " * 1500, "max_tokens": 1000})  # window
    post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 2})           # served
    rows = inproc.platform.usage.records(account_id=acct.id)
    assert len(rows) == 4, rows
    assert all(r["dialect"] == "welm" for r in rows)
    assert sorted(r["status"] for r in rows).count("ok") == 1


# -- the error table (503/504 cannot be provoked cheaply) ------------------------------------

@pytest.mark.parametrize("exc,status,finish", [
    (E.Overloaded("busy"), 503, "error: service unavailable"),
    (E.Timeout("late"), 504, "error: timeout"),
    (E.ContentBlocked("no", reason="input"), 400, "error: content policy violation"),
    (E.PermissionDenied("no"), 403, "error: permission denied"),
    (E.Internal("bug"), 500, "error: internal error"),
])
def test_error_table(exc, status, finish):
    r = welm_error(exc, MODEL)
    assert r.status_code == status
    assert json.loads(r.body)["choices"][0]["finish_reason"] == finish
