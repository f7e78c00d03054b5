"""SenseNova dialect (seed 003) over raw HTTP against the in-process app (tests/inproc.py:
`wharf serve`'s app on the scripted engine, the real tokenizer): parameter ranges, the
context window, malformed bodies and every way a JWT fails. What goes through the real
`sensenova` SDK, or needs the model's own text, is test_sensenova_sdk.py."""

from __future__ import annotations

import time
import types

import jwt
import pytest

from tests.conftest import MODEL
from tests.dialect_auth import SensenovaAuth, sensenova_jwt


@pytest.fixture(scope="module")
def client(inproc):
    return inproc.client


@pytest.fixture(scope="module")
def creds(inproc):
    acct, _ = inproc.account("sensenova-tests")
    issued = inproc.platform.credentials.create(acct.id, "sensenova", label="raw")
    return issued.public_id, issued.secret


@pytest.fixture(scope="module")
def http(client, creds):
    """The in-process client, each request signed with a fresh token (starlette's TestClient
    takes no httpx.Auth, so the header goes in by hand)."""
    auth = SensenovaAuth(*creds)
    return types.SimpleNamespace(post=lambda path, **kw: client.post(
        path, headers={**auth.header(), **kw.pop("headers", {})}, **kw))


# -- ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("prompt", None), ("prompt", ""), ("prompt", 3),
    ("model", None), ("model", ""),
    ("n", 0), ("n", 5), ("n", "2"),
    ("max_new_tokens", 0), ("max_new_tokens", 2049), ("max_new_tokens", 1.5),
    ("repetition_penalty", 0), ("repetition_penalty", -1), ("repetition_penalty", 2.01),
    ("temperature", 0), ("temperature", 2.01), ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1), ("top_p", 1.2),
    ("stream", "yes"), ("stop", 5),
])
def test_range_violation_is_400(http, field, value):
    body = {"model": MODEL, "prompt": "Hi", "max_new_tokens": 2}
    if value is None:
        body.pop(field)
    else:
        body[field] = value
    r = http.post("/v1/llm/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 3 and err["details"] == [] and field in err["message"]


@pytest.mark.parametrize("field,value", [("n", 4), ("max_new_tokens", 1), ("repetition_penalty", 2),
                                         ("temperature", 2), ("top_p", 0.999)])
def test_range_boundaries_accepted(http, field, value):
    body = {"model": MODEL, "prompt": "Hi", "max_new_tokens": 2, field: value}
    r = http.post("/v1/llm/completions", json=body)
    assert r.status_code == 200, r.text



def test_prompt_plus_max_new_tokens_over_context_is_400(http):
    r = http.post("/v1/llm/completions", json={"model": MODEL, "prompt": "x " * 1200, "max_new_tokens": 2000})
    assert r.status_code == 400
    assert "max_new_tokens" in r.json()["error"]["message"]



def test_bad_json_is_400_json(http):
    r = http.post("/v1/llm/completions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 3



def _post_with(client, tok):
    headers = {} if tok is None else {"Authorization": f"Bearer {tok}"}
    return client.post("/v1/llm/completions", headers=headers, json={"model": MODEL, "prompt": "Hi",
                                                                      "max_new_tokens": 2})


@pytest.mark.parametrize("case", ["missing", "garbage", "bad_signature", "unknown_key", "expired",
                                  "not_yet_valid", "alg_none", "no_exp", "hs512"])
def test_jwt_failures_are_401(client, creds, case):
    ak, sk = creds
    tok = {
        "missing": None,
        "garbage": "not.a.jwt",
        "bad_signature": sensenova_jwt(ak, sk + "x"),
        "unknown_key": sensenova_jwt("AK-does-not-exist", sk),
        "expired": sensenova_jwt(ak, sk, exp_in=-3600, nbf_in=-7200),
        "not_yet_valid": sensenova_jwt(ak, sk, exp_in=7200, nbf_in=3600),
        "alg_none": jwt.encode({"iss": ak, "exp": int(time.time()) + 600, "nbf": int(time.time()) - 5},
                               None, algorithm="none"),
        "no_exp": jwt.encode({"iss": ak, "nbf": int(time.time()) - 5}, sk, algorithm="HS256"),
        "hs512": sensenova_jwt(ak, sk, alg="HS512"),
    }[case]
    r = _post_with(client, tok)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == 16 and err["details"] == []



def test_models_list_requires_auth(client):
    assert client.get("/v1/llm/models").status_code == 401


def test_api_key_is_not_a_sensenova_token(client, inproc):
    assert _post_with(client, inproc.account("sensenova-api-key")[1]).status_code == 401
