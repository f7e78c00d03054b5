"""SenseNova dialect (seed 003) through the real `sensenova` SDK (1.0.6) and raw HTTP,
against a real `wharf serve` on the embedded model."""

from __future__ import annotations

import json

import httpx
import pytest
import sensenova

from tests.dialect_auth import SensenovaAuth, sensenova_jwt

MODEL = "smollm2-135m-instruct"      # as in tests/conftest.py
PROMPT = "The capital of France is Paris. The capital of Germany is"
GREEDY = {"temperature": 0.01, "top_p": 0.000001}   # temperature 0 is out of SenseNova's range


@pytest.fixture(scope="module")
def creds(server):
    acct, _ = server.account("sensenova-tests")
    issued = server.platform.credentials.create(acct.id, "sensenova", label="sdk")
    return issued.public_id, issued.secret


@pytest.fixture(scope="module", autouse=True)
def sdk(server, creds):
    """Point the real SDK at Wharf (api_base is read from SENSENOVA_API_BASE at import time,
    so set the module attribute as well)."""
    saved = (sensenova.api_base, sensenova.access_key_id, sensenova.secret_access_key)
    sensenova.api_base = f"{server.url}/v1"
    sensenova.access_key_id, sensenova.secret_access_key = creds
    yield
    sensenova.api_base, sensenova.access_key_id, sensenova.secret_access_key = saved


@pytest.fixture(scope="module")
def http(server, creds):
    with httpx.Client(base_url=server.url, timeout=120, auth=SensenovaAuth(*creds)) as c:
        yield c


# -- completions through the SDK ---------------------------------------------------------------

def test_sdk_completion_non_stream(server):
    resp = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=8, **GREEDY)
    data = resp["data"]
    assert resp["status"] == {"code": 0, "message": "ok"}
    assert set(data) == {"id", "choices", "usage"}
    (choice,) = data["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    u = data["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 8
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_sdk_stream_matches_non_stream_for_greedy():
    full = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=12, **GREEDY)["data"]
    events = list(sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=12, stream=True,
                                              **GREEDY))
    assert len(events) >= 2
    text = "".join(e["data"]["choices"][0]["delta"] for e in events)
    assert text == full["choices"][0]["text"]
    text.encode("utf-8")                                     # whole characters only
    for e in events[:-1]:
        assert e["data"]["choices"][0]["finish_reason"] == ""
        assert e["data"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    last = events[-1]["data"]
    assert last["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert last["usage"] == full["usage"] and last["usage"]["completion_tokens"] > 0
    assert all(e["status"] == {"code": 0, "message": "ok"} for e in events)


def test_stream_chinese_deltas_are_valid_utf8():
    events = list(sensenova.Completion.create(model=MODEL, prompt="请用中文写一句话：今天天气", max_new_tokens=16,
                                              stream=True, **GREEDY))
    text = "".join(e["data"]["choices"][0]["delta"] for e in events)
    assert "\ufffd" not in text
    assert events[-1]["data"]["usage"]["completion_tokens"] > 0


def test_raw_stream_framing(http):
    with http.stream("POST", "/v1/llm/completions",
                     json={"model": MODEL, "prompt": PROMPT, "max_new_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    lines = [line for line in raw.split("\n") if line]
    assert all(line.startswith("data:{") for line in lines[:-1])
    assert lines[-1] == "data:[DONE]"
    assert raw.endswith("data:[DONE]\n\n")


def test_n_choices_stream_and_non_stream():
    resp = sensenova.Completion.create(model=MODEL, prompt="Once upon a time", max_new_tokens=6, n=4)
    assert sorted(c["index"] for c in resp["data"]["choices"]) == [0, 1, 2, 3]
    events = list(sensenova.Completion.create(model=MODEL, prompt="Once upon a time", max_new_tokens=6, n=3,
                                              stream=True))
    finished = [e["data"]["choices"][0]["index"] for e in events if e["data"]["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1, 2]
    assert events[-1]["data"]["usage"]["completion_tokens"] > 0


def test_defaults_and_stop(http):
    """No sampling fields at all: seed defaults apply (max_new_tokens 1024 would be slow, so
    a stop string that the model writes at once ends it)."""
    full = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=12, **GREEDY)
    text = full["data"]["choices"][0]["text"]
    stop = text.strip()[:3]
    cut = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=12, stop=stop, **GREEDY)
    choice = cut["data"]["choices"][0]
    assert choice["text"] == text[:text.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_length_finish_reason():
    resp = sensenova.Completion.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_new_tokens=2, **GREEDY)
    assert resp["data"]["choices"][0]["finish_reason"] == "length"


# -- chat-completions (beyond the seed) ---------------------------------------------------------

def test_sdk_chat_completion():
    msgs = [{"role": "user", "content": "Say hello."}]
    resp = sensenova.ChatCompletion.create(model=MODEL, messages=msgs, max_new_tokens=8, **GREEDY)
    (choice,) = resp["data"]["choices"]
    assert isinstance(choice["message"], str) and choice["role"] == "assistant"
    events = list(sensenova.ChatCompletion.create(model=MODEL, messages=msgs, max_new_tokens=8, stream=True,
                                                  **GREEDY))
    assert "".join(e["data"]["choices"][0]["delta"] for e in events) == choice["message"]
    assert events[-1]["data"]["usage"] == resp["data"]["usage"]


def test_chat_extra_sdk_keys_accepted():
    resp = sensenova.ChatCompletion.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                           max_new_tokens=2, know_ids=[], user="u1",
                                           knowledge_config={"control_level": "normal"})
    assert resp["data"]["choices"]


# -- models ---------------------------------------------------------------------------------

def test_sdk_models_list_and_retrieve():
    listed = sensenova.Model.list()
    ids = [m["id"] for m in listed["data"]]
    assert MODEL in ids
    card = sensenova.Model.retrieve(id=MODEL)
    assert card["id"] == MODEL and card["context_size"] > 0
    with pytest.raises(sensenova.InvalidRequestError):
        sensenova.Model.retrieve(id="no-such-model")


# -- ranges ---------------------------------------------------------------------------------

def test_range_violation_through_sdk_raises_invalid_request():
    with pytest.raises(sensenova.InvalidRequestError):
        sensenova.Completion.create(model=MODEL, prompt="Hi", n=5, max_new_tokens=2)


def test_unknown_model_is_404():
    with pytest.raises(sensenova.InvalidRequestError) as info:
        sensenova.Completion.create(model="no-such-model", prompt="Hi", max_new_tokens=2)
    assert info.value.http_status == 404


# -- JWT failures ---------------------------------------------------------------------------

def test_sdk_wrong_secret_raises_authentication_error(creds):
    with pytest.raises(sensenova.AuthenticationError):
        sensenova.Completion.create(model=MODEL, prompt="Hi", max_new_tokens=2,
                                    access_key_id=creds[0], secret_access_key="wrong")


def _post_with(server, tok):
    return httpx.post(f"{server.url}/v1/llm/completions", headers={"Authorization": f"Bearer {tok}"}, timeout=60,
                      json={"model": MODEL, "prompt": "Hi", "max_new_tokens": 2})


# -- limits -----------------------------------------------------------------------------------

def test_rate_limit_is_429_json(server):
    acct, _ = server.account("sensenova-rpm", rpm=1)
    issued = server.platform.credentials.create(acct.id, "sensenova", label="rpm")
    kw = {"access_key_id": issued.public_id, "secret_access_key": issued.secret}
    sensenova.Completion.create(model=MODEL, prompt="Hi", max_new_tokens=1, **kw)
    with pytest.raises(sensenova.RateLimitError):
        sensenova.Completion.create(model=MODEL, prompt="Hi", max_new_tokens=1, **kw)
    r = _post_with(server, sensenova_jwt(issued.public_id, issued.secret))
    assert r.status_code == 429 and r.json()["error"]["code"] == 8


def test_usage_recorded_once(server):
    acct, _ = server.account("sensenova-usage")
    issued = server.platform.credentials.create(acct.id, "sensenova", label="u")
    tok = lambda: sensenova_jwt(issued.public_id, issued.secret)  # noqa: E731
    for body in ({"model": MODEL, "prompt": "Hi", "n": 9}, {"model": "nope", "prompt": "Hi"},
                 {"model": MODEL, "prompt": "Hi", "max_new_tokens": 2}):
        httpx.post(f"{server.url}/v1/llm/completions", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {tok()}"})
    rows = server.platform.usage.records(account_id=acct.id)
    assert len(rows) == 3 and all(r["dialect"] == "sensenova" for r in rows)
    assert [r["status"] for r in rows].count("ok") == 1


# -- safety -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lexicon_server(server_factory, tmp_path_factory):
    import re
    full = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=16, **GREEDY)
    text = full["data"]["choices"][0]["text"]
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", text) if w.casefold() not in PROMPT.casefold())
    path = tmp_path_factory.mktemp("lex") / "lexicon.txt"
    path.write_text(f"forbiddenthing\n{word}\n", encoding="utf-8")
    s = server_factory(extra_env={"WHARF_LEXICON_PATH": str(path)})
    acct, _ = s.account("sensenova-safety")
    issued = s.platform.credentials.create(acct.id, "sensenova", label="safety")
    return s, {"access_key_id": issued.public_id, "secret_access_key": issued.secret,
               "api_base": f"{s.url}/v1"}


def test_blocked_prompt_is_200_sensitive(lexicon_server):
    _, kw = lexicon_server
    resp = sensenova.Completion.create(model=MODEL, prompt="about forbiddenthing", max_new_tokens=4, **kw)
    (choice,) = resp["data"]["choices"]
    assert choice == {"text": "", "index": 0, "finish_reason": "sensitive"}
    assert resp["data"]["usage"]["completion_tokens"] == 0
    events = list(sensenova.Completion.create(model=MODEL, prompt="about forbiddenthing", max_new_tokens=4,
                                              stream=True, **kw))
    assert events[-1]["data"]["choices"][0]["finish_reason"] == "sensitive"


def test_blocked_output_is_sensitive(lexicon_server):
    _, kw = lexicon_server
    resp = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=16, **GREEDY, **kw)
    assert resp["data"]["choices"][0]["finish_reason"] == "sensitive"
    events = list(sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=16, stream=True,
                                              **GREEDY, **kw))
    assert events[-1]["data"]["choices"][0]["finish_reason"] == "sensitive"
    assert events[-1]["data"]["usage"]["completion_tokens"] > 0
    json.dumps([e["data"] for e in events])
