"""WeLM dialect (seed 000) over real HTTP against a real `wharf serve` on the embedded model.

There is no WeLM SDK; clients post JSON with httpx exactly as the seed's curl does."""

from __future__ import annotations

import re
import string
import uuid

import httpx
import pytest

from wharf import errors as E
from wharf.api.welm import welm_error

MODEL = "smollm2-135m-instruct"      # as in tests/conftest.py
PATH = "/welm/v1/completions"
PROMPT = "The capital of France is Paris. The capital of Germany is"
CN_PROMPT = "请用中文回答。中国的首都是北京。日本的首都是"


@pytest.fixture(scope="module")
def key(server):
    return server.account("welm-tests")[1]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(client, key, body, *, bare=False):
    auth = key if bare else f"Bearer {key}"
    body = {k: v for k, v in body.items() if v is not None}     # None: leave the field out
    return client.post(PATH, json=body, headers={"Authorization": auth})


def greedy(client, key, prompt, max_tokens=16, **extra) -> dict:
    r = post(client, key, {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           **extra})
    assert r.status_code == 200, r.text
    return r.json()


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


def test_default_max_tokens_is_16_and_matches_openai_greedy(server, client, key, api_key):
    """temperature 0 is argmax: the text equals OpenAI /v1/completions greedy for the same
    prompt and max_tokens (16, WeLM's default, which the WeLM body here leaves out)."""
    welm = greedy(client, key, PROMPT, max_tokens=None)  # None is dropped below
    oa = client.post("/v1/completions", headers={"Authorization": f"Bearer {api_key}"},
                     json={"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert oa.status_code == 200, oa.text
    oa = oa.json()
    assert welm["choices"][0]["text"] == oa["choices"][0]["text"]
    expected = {"length": "length", "stop": "finished"}[oa["choices"][0]["finish_reason"]]
    assert welm["choices"][0]["finish_reason"] == expected


def test_temperature_zero_n_identical_and_equal_to_openai(client, key, api_key):
    body = greedy(client, key, PROMPT, max_tokens=12, n=4)
    texts = [c["text"] for c in body["choices"]]
    assert len(texts) == 4 and len(set(texts)) == 1
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    oa = client.post("/v1/completions", headers={"Authorization": f"Bearer {api_key}"},
                     json={"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    assert texts[0] == oa["choices"][0]["text"]


def test_length_finish_reason_is_distinct(client, key):
    body = greedy(client, key, "1, 2, 3, 4, 5, 6,", max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"


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


# -- n, echo, stop --------------------------------------------------------------------------

def test_n12_distinct_samples(client, key):
    r = post(client, key, {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "n": 12})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(12))
    texts = [c["text"] for c in choices]
    assert len(set(texts)) >= 8, texts


def test_echo_prepends_prompt(client, key):
    plain = greedy(client, key, PROMPT, max_tokens=6)["choices"][0]["text"]
    echoed = greedy(client, key, PROMPT, max_tokens=6, echo=True)["choices"][0]["text"]
    assert echoed == PROMPT + plain


def test_echo_chinese_prompt(client, key):
    plain = greedy(client, key, CN_PROMPT, max_tokens=8)["choices"][0]["text"]
    echoed = greedy(client, key, CN_PROMPT, max_tokens=8, echo=True)["choices"][0]["text"]
    assert echoed == CN_PROMPT + plain
    assert "\ufffd" not in plain


def _cut(text: str, stops: str) -> str:
    idx = [text.index(c) for c in set(stops) if c in text]
    return text[:min(idx)] if idx else text


def test_each_stop_character_stops_on_its_own(client, key):
    full = greedy(client, key, PROMPT, max_tokens=16)["choices"][0]["text"]
    # a character that appears after the start, plus one that never appears
    later = next(ch for ch in full[1:] if ch not in full[:1] and ch.strip())
    stops = "\x07" + later
    out = greedy(client, key, PROMPT, max_tokens=16, stop=stops)["choices"][0]
    assert out["text"] == _cut(full, stops)
    assert later not in out["text"]
    assert out["finish_reason"] == "finished"


def test_chinese_stop_character(client, key):
    full = greedy(client, key, CN_PROMPT, max_tokens=16)["choices"][0]["text"]
    cjk = [ch for ch in full if ord(ch) > 0x2E80]
    stops = "。" + (cjk[len(cjk) // 2] if cjk else "")
    out = greedy(client, key, CN_PROMPT, max_tokens=16, stop=stops)["choices"][0]
    assert out["text"] == _cut(full, stops)
    assert not set(out["text"]) & set(stops)


def test_first_character_is_stop_gives_empty_text_not_error(client, key):
    everything = string.printable + "。,,、"
    r = post(client, key, {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                           "stop": everything})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "" and choice["finish_reason"] == "finished"


# -- the 2048 window -------------------------------------------------------------------------

def test_prompt_plus_max_tokens_at_most_2048(server, client, key):
    """The 2048 check runs before the policy path: a request exactly at 2048 passes it and
    reaches the quota (a 1-character daily quota refuses it, so no 1,100-token prefill is
    paid for), one token more is a 400 naming max_tokens and 2048."""
    long_prompt = "apple banana cherry " * 380
    probe = post(client, key, {"model": MODEL, "prompt": long_prompt, "max_tokens": 1024})
    assert probe.status_code == 400, probe.text
    p = int(re.search(r"\((\d+) in the prompt", probe.json()["error"]["message"]).group(1))
    assert 1024 < p < 2047, p
    room = 2048 - p
    _, tight = server.account("welm-window", quota_chars_per_day=1)
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

def test_rate_limit_body_exact(server, client):
    _, k = server.account("welm-rpm", rpm=1)
    assert post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200
    r = post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 429
    assert r.text == "rate limit exceeded"
    assert r.headers["content-type"].startswith("text/plain")


def test_quota_body_exact(server, client):
    _, k = server.account("welm-quota", quota_chars_per_day=4)
    r = post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 16})
    assert r.status_code == 429
    assert r.text == "quota limit exceed"


def test_usage_recorded_once_for_rejected_and_served(server, client):
    acct, k = server.account("welm-usage")
    post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 0})          # invalid
    post(client, k, {"model": "nope", "prompt": "Hi"})                           # unknown model
    post(client, k, {"model": MODEL, "prompt": "x " * 1500, "max_tokens": 1000})  # window
    post(client, k, {"model": MODEL, "prompt": "Hi", "max_tokens": 2})           # served
    rows = server.platform.usage.records(account_id=acct.id)
    assert len(rows) == 4, rows
    assert all(r["dialect"] == "welm" for r in rows)
    assert sorted(r["status"] for r in rows).count("ok") == 1


# -- the error table (503/504 cannot be provoked cheaply on the shared server) --------------

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
    import json
    assert json.loads(r.body)["choices"][0]["finish_reason"] == finish


# -- safety: a server with a lexicon ------------------------------------------------------

@pytest.fixture(scope="module")
def lexicon_server(server, server_factory, key, client, tmp_path_factory):
    """A second server whose lexicon holds a word the model writes greedily for PROMPT."""
    full = greedy(client, key, PROMPT, max_tokens=16)["choices"][0]["text"]
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", full) if w.casefold() not in PROMPT.casefold())
    path = tmp_path_factory.mktemp("lex") / "lexicon.txt"
    path.write_text(f"forbiddenthing\n敏感词\n{word}\n", encoding="utf-8")
    s = server_factory(extra_env={"WHARF_LEXICON_PATH": str(path)})
    return s, s.account("welm-safety")[1]


def test_blocked_prompt_is_400_content_policy(lexicon_server):
    s, k = lexicon_server
    with httpx.Client(base_url=s.url, timeout=120) as c:
        for prompt in ("tell me about forbiddenthing", "这是敏感词吗"):
            r = post(c, k, {"model": MODEL, "prompt": prompt, "max_tokens": 4})
            assert r.status_code == 400
            assert r.json()["choices"][0]["finish_reason"] == "error: content policy violation"


def test_blocked_output_is_200_internal_error(lexicon_server):
    s, k = lexicon_server
    with httpx.Client(base_url=s.url, timeout=120) as c:
        r = post(c, k, {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "error: internal error"
