"""Upstream backend in front of a real llama.cpp server: llama-cpp-python's OpenAI server
on the embedded GGUF, with a gateway `wharf serve --backend upstream` in front. The
dialects, usage and error mapping stay on the gateway; tokens come from llama.cpp.

llama-cpp-python is optional (no wheel on PyPI: it builds llama.cpp from source), so
this module is skipped without it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import MODEL
from tests.scale.test_upstream import PROMPT, QF, _post, _sensenova_token, _tokenizer_dir
from tests.services import free_port

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python not installed (optional; pip install 'wharf[llamacpp]')",
                allow_module_level=True)

GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """llama-cpp-python's server on a free loopback port, serving the GGUF as MODEL."""
    from wharf.engine.loader import embedded_model_path

    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
             "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--interrupt_requests", "False"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama_cpp.server did not start in 60 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)
    yield SimpleNamespace(url=url, proc=proc)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def gateway(server_factory, llama, model_cache_dir):
    return server_factory(args=["--backend", "upstream", "--upstream-url", llama.url],
                          extra_env={"WHARF_UPSTREAM_TOKENIZER": _tokenizer_dir(model_cache_dir)})


@pytest.fixture(scope="module")
def client(gateway):
    """A gateway account with an API key, a Qianfan app and a chat service."""
    acct, key = gateway.account(f"llamacpp-{uuid.uuid4().hex[:6]}")
    app = gateway.platform.credentials.create(acct.id, "qianfan_app", label="app")
    endpoint = gateway.platform.services.create(acct.id, "lcpp", MODEL, "chat", "llama.cpp behind the gateway").endpoint
    return SimpleNamespace(acct=acct, key=key, app=app, endpoint=endpoint)


def test_models_come_from_llama_cpp(gateway, client):
    cards = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {client.key}"}).json()
    (card,) = [c for c in cards["data"] if c["id"] == MODEL]
    assert card["backend"] == "upstream"


def test_openai_completion_equals_llama_cpp(gateway, client, llama):
    body = {"model": MODEL, "prompt": PROMPT, **GREEDY}
    direct = httpx.post(llama.url + "/v1/completions", json=body, timeout=60)
    via = _post(gateway, client.key, "/v1/completions", body, timeout=60)
    assert direct.status_code == 200 and via.status_code == 200, via.text
    d, v = direct.json(), via.json()
    assert v["object"] == "text_completion"
    assert v["choices"][0]["text"] == d["choices"][0]["text"] and v["choices"][0]["text"]
    assert v["choices"][0]["finish_reason"] == d["choices"][0]["finish_reason"]
    # llama.cpp streams no usage: completions are counted from its deltas, prompts with
    # the same tokenizer (WHARF_UPSTREAM_TOKENIZER).
    assert v["usage"] == d["usage"]


def test_qianfan_chat_stream_through_gateway(gateway, client):
    tok = httpx.post(gateway.url + "/oauth/2.0/token", params={
        "grant_type": "client_credentials", "client_id": client.app.public_id,
        "client_secret": client.app.secret}).json()
    r = httpx.post(f"{gateway.url}{QF}/chat/{client.endpoint}", params={"access_token": tok["access_token"]},
                   json={"messages": [{"role": "user", "content": "Name three colours."}], "stream": True,
                         "max_output_tokens": 8}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    chunks = [json.loads(e[len("data: "):]) for e in r.text.split("\n\n")[:-1]]
    assert chunks and not any("error_code" in c for c in chunks), r.text
    assert chunks[-1]["is_end"] is True and not any(c["is_end"] for c in chunks[:-1])
    assert "".join(c["result"] for c in chunks).strip()
    assert 1 <= chunks[-1]["usage"]["completion_tokens"] <= 8


def test_sensenova_completion_through_gateway(gateway, client):
    issued = gateway.platform.credentials.create(client.acct.id, "sensenova", label="sn")
    r = httpx.post(gateway.url + "/v1/llm/completions",
                   headers={"Authorization": f"Bearer {_sensenova_token(issued.public_id, issued.secret)}"},
                   json={"model": MODEL, "prompt": PROMPT, "max_new_tokens": 8}, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["choices"][0]["text"] and 1 <= data["usage"]["completion_tokens"] <= 8


def test_usage_is_recorded_on_the_gateway(gateway, client):
    records = gateway.platform.usage.records(account_id=client.acct.id, limit=100)
    by_dialect = {r["dialect"] for r in records}
    assert {"openai", "qianfan", "sensenova"} <= by_dialect, records
    assert all(r["status"] == "ok" and 1 <= r["completion_tokens"] <= 8 and r["prompt_tokens"] > 1
               for r in records)
    assert len({r["request_id"] for r in records}) == len(records) == 3


def test_llama_cpp_down_is_503(gateway, client, llama):
    llama.proc.terminate()
    llama.proc.wait(30)
    r = _post(gateway, client.key, "/v1/completions", {"model": MODEL, "prompt": PROMPT, **GREEDY}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
    assert gateway.proc.poll() is None          # the gateway itself is fine
    rec = gateway.platform.usage.records(account_id=client.acct.id, limit=1)[0]
    assert rec["status"].startswith("error")
