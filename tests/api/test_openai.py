"""The OpenAI API over real HTTP, through the real `openai` SDK, on the real default model."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL, stop_server


@pytest.fixture(scope="module")
def client(server, api_key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def test_models_list_shows_the_real_identity(client):
    models = {m.id: m for m in client.models.list().data}
    assert MODEL in models
    assert models[MODEL].model_extra["root"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_chat_completion_in_chinese(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "你好，请介绍一下你自己。"}],
                                       max_tokens=24, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_equals_non_stream_and_reports_usage(client):
    kw = dict(model=MODEL, prompt="用一句话描述大海：", max_tokens=20, temperature=0)
    whole = client.completions.create(**kw)
    stream = client.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert len(pieces) > 3                                  # token-incremental, not one blob
    assert "".join(pieces) == whole.choices[0].text
    assert all("\ufffd" not in p for p in pieces)
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert finish == whole.choices[0].finish_reason


def test_chat_stream_with_n_and_include_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                            max_completion_tokens=10, n=2, temperature=0.9, seed=3, stream=True,
                                            stream_options={"include_usage": True})
    texts, finishes, usage = {0: "", 1: ""}, {}, None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert set(finishes) == {0, 1} and usage.completion_tokens >= 2


def test_stop_list_and_max_tokens_length(client):
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
    text = base.choices[0].text
    stop = text.strip()[:2] if len(text.strip()) > 2 else ","
    cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0,
                                    stop=[stop, "zzz"])
    assert stop not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"
    short = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=2, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_seed_reproducible_and_extensions_accepted(client):
    kw = dict(model=MODEL, prompt="A random animal:", max_tokens=12, temperature=1.0, seed=1234,
              presence_penalty=0.5, frequency_penalty=0.5, user="u-42",
              extra_body={"top_k": 40, "repetition_penalty": 1.2})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text


def test_logprobs_and_echo(client):
    r = client.completions.create(model=MODEL, prompt="Paris is", max_tokens=3, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    assert c.text.startswith("Paris is")
    assert len(c.logprobs.tokens) == 3 and len(c.logprobs.top_logprobs[0]) == 2
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          logprobs=True, top_logprobs=2, temperature=0)
    content = chat.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 2


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=3), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(presence_penalty=9), "presence_penalty"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(max_tokens=100000), "max_tokens"),
])
def test_bad_parameters_are_400_naming_the_param(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param


def test_unknown_model_is_404_and_bad_key_401(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="x")
    assert err.value.body["code"] == "model_not_found"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("body, ctype", [
    (b"{not json", "application/json"),
    (b"\xff\xfe\x00", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"model": "%s", "prompt": "x", "max_tokens": NaN}' % MODEL.encode(), "application/json"),
    (b'{"model": "%s", "messages": []}' % MODEL.encode(), "application/json"),
    (b'{"model": "%s", "messages": [{"role": "wizard", "content": "x"}]}' % MODEL.encode(), "application/json"),
])
def test_malformed_bodies_are_clean_400s(server, api_key, body, ctype):
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    r = httpx.post(server.url + path, content=body, headers={"Authorization": f"Bearer {api_key}",
                                                            "Content-Type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_usage_is_recorded_once_per_request_including_disconnects(server):
    acct, key = server.account("openai-usage")
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    c.completions.create(model=MODEL, prompt="hello", max_tokens=4, user="alice")
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=MODEL, prompt="hello", max_tokens=0)
    # A client that hangs up mid-stream.
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "prompt": "Tell a long story", "max_tokens": 400, "stream": True,
                            "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break
    deadline = time.time() + 10
    while time.time() < deadline:
        records = server.platform.usage.records(acct.id)
        if len(records) >= 3:
            break
        time.sleep(0.2)
    statuses = sorted(r["status"] for r in records)
    assert statuses == ["cancelled", "error:invalid_param", "ok"], records
    ok = next(r for r in records if r["status"] == "ok")
    assert ok["user"] == "alice" and ok["completion_tokens"] > 0 and ok["dialect"] == "openai"
    stats = server.engine_stats()[MODEL]
    deadline = time.time() + 5
    while stats["running"] and time.time() < deadline:
        time.sleep(0.1)
        stats = server.engine_stats()[MODEL]
    assert stats["running"] == 0


def test_full_queue_is_503_overloaded(server_factory):
    small = server_factory(extra_env={"WHARF_MAX_BATCH_SIZE": "1", "WHARF_MAX_QUEUE": "1"})
    _, key = small.account("overload")
    body = {"model": MODEL, "prompt": "Tell a story", "max_tokens": 64, "ignore_eos": True}

    def call(_):
        return httpx.post(small.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=120)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(call, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded"


def test_metrics_count_requests(server, client):
    client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    text = httpx.get(server.url + "/metrics").text
    assert 'wharf_requests_total{dialect="openai",status="ok"}' in text
    assert "wharf_ttft_seconds_bucket" in text


def test_int8_server_streams_chinese_through_the_sdk(server_factory):
    fast = server_factory(extra_env={"WHARF_QUANTIZE": "int8"})
    try:
        _, key = fast.account("int8")
        sdk = openai.OpenAI(base_url=fast.url + "/v1", api_key=key)
        stream = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "用一句话介绍长城。"}],
                                             max_tokens=24, temperature=0, stream=True,
                                             stream_options={"include_usage": True})
        chunks = list(stream)
    finally:
        stop_server(fast)      # one server fewer holding memory for the rest of the session
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and "\ufffd" not in text
    assert chunks[-1].usage.completion_tokens >= 1
    assert any("int8 matmuls" in line for line in fast.log().splitlines())


def test_unknown_quantization_is_refused_at_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wharf", "serve", "--quantize", "int3"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "WHARF_DATA_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "--quantize" in proc.stdout + proc.stderr and "int3" in proc.stdout + proc.stderr
