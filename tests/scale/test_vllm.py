"""vLLM backend.

Three layers: (1) VllmEngine against a stand-in with vLLM's documented shapes (cumulative
RequestOutputs, per-choice CompletionOutputs, abort) — runs everywhere; (2) `wharf serve
--backend vllm` without vllm installed fails with a clear message; (3) a real server on a
GPU, which skips unless vllm and CUDA are both present."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import MODEL
from wharf.engine.backends.vllm_backend import VllmEngine
from wharf.engine.types import FinishReason, GenerationRequest, ModelInfo, SamplingParams


def _has_vllm_gpu() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'wharf[vllm]'; needs a CUDA GPU)"
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
    except Exception as exc:  # pragma: no cover
        return f"torch/CUDA unavailable: {exc}"
    return None


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir):
    from transformers import AutoTokenizer

    from wharf.engine.loader import _convert_gguf, _gguf_cache_dir, embedded_model_path
    folder = _gguf_cache_dir(embedded_model_path(), model_cache_dir)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(embedded_model_path(), folder, lambda m: None)
    return AutoTokenizer.from_pretrained(folder)


# -- (1) a stand-in with vLLM's shapes ----------------------------------------------------

@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list | None = None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = False


@dataclass
class FakeSamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list | None = None
    stop_token_ids: list | None = None
    ignore_eos: bool = False
    logprobs: int | None = None


@dataclass
class FakeLLM:
    """Streams the words of `script[i]` for choice i, cumulatively, one token per word."""

    script: list[list[str]]
    finish: str = "length"
    delay: float = 0.0
    calls: list = field(default_factory=list)
    aborted: list = field(default_factory=list)

    async def generate(self, prompt, params, request_id):
        self.calls.append((prompt, params, request_id))
        longest = max(len(s) for s in self.script)
        for step in range(1, longest + 1):
            await asyncio.sleep(self.delay)
            outs = []
            for i, words in enumerate(self.script[: params.n]):
                k = min(step, len(words))
                lps = [{100 + j: Logprob(-0.5, 1, words[j]), 7: Logprob(-1.5, 2, "x")} for j in range(k)] \
                    if params.logprobs is not None else None
                outs.append(CompletionOutput(i, "".join(words[:k]), [100 + j for j in range(k)], lps,
                                             self.finish if k == len(words) else None))
            yield RequestOutput(request_id, outs, finished=step == longest)

    async def abort(self, request_id):
        self.aborted.append(request_id)


def _engine(llm, tokenizer, window=2048) -> VllmEngine:
    info = ModelInfo(name=MODEL, identity="test", path="-", backend="vllm", context_length=window, dtype="bf16")
    return VllmEngine(llm, tokenizer, info, sampling_cls=FakeSamplingParams)


async def _collect(engine, request):
    return [c async for c in engine.generate(engine.prepare(request))]


def test_deltas_finish_and_params(tokenizer):
    llm = FakeLLM([["Hel", "lo", " wor", "ld"], ["A", "B"]])
    engine = _engine(llm, tokenizer)
    sp = SamplingParams(max_tokens=4, n=2, temperature=0.7, top_k=0, seed=3, stop=["."], logprobs=1,
                        repetition_penalty=1.1)
    chunks = asyncio.run(_collect(engine, GenerationRequest(model=MODEL, prompt="Hi there", sampling=sp)))
    text = {i: "".join(c.text for c in chunks if c.index == i) for i in (0, 1)}
    assert text == {0: "Hello world", 1: "AB"}
    finals = {c.index: c for c in chunks if c.finish_reason}
    assert finals[0].finish_reason is FinishReason.LENGTH and finals[0].completion_tokens == 4
    assert finals[1].completion_tokens == 2
    assert all(c.prompt_tokens == len(tokenizer("Hi there")["input_ids"]) for c in chunks)
    lps = [lp for c in chunks if c.index == 0 for lp in c.logprobs or []]
    assert [lp.token for lp in lps] == ["Hel", "lo", " wor", "ld"] and len(lps[0].top) == 1
    prompt, params, rid = llm.calls[0]
    assert prompt == {"prompt_token_ids": tokenizer("Hi there")["input_ids"]}
    assert (params.n, params.max_tokens, params.top_k, params.seed, params.stop, params.logprobs,
            params.repetition_penalty) == (2, 4, -1, 3, ["."], 1, 1.1)
    assert llm.aborted == [] and engine.stats().running == 0


def test_chat_is_rendered_with_the_template(tokenizer):
    llm = FakeLLM([["ok"]], finish="stop")
    engine = _engine(llm, tokenizer)
    req = GenerationRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                            sampling=SamplingParams(max_tokens=5))
    chunks = asyncio.run(_collect(engine, req))
    assert chunks[-1].finish_reason is FinishReason.STOP
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert llm.calls[0][0]["prompt_token_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_window_and_max_tokens_checked(tokenizer):
    from wharf.errors import ContextLengthExceeded, InvalidParam
    engine = _engine(FakeLLM([["x"]]), tokenizer, window=8)
    with pytest.raises(ContextLengthExceeded):
        engine.prepare(GenerationRequest(model=MODEL, prompt="one two three four five", sampling=SamplingParams(max_tokens=6)))
    with pytest.raises(InvalidParam):
        engine.prepare(GenerationRequest(model=MODEL, prompt="x", sampling=SamplingParams(max_tokens=0)))


def test_closing_the_stream_aborts_the_request(tokenizer):
    llm = FakeLLM([[f"w{i} " for i in range(100)]], delay=0.001)
    engine = _engine(llm, tokenizer)

    async def run():
        req = GenerationRequest(model=MODEL, prompt="go", sampling=SamplingParams(max_tokens=100))
        gen = engine.generate(engine.prepare(req))
        got = [await gen.__anext__() for _ in range(3)]
        assert engine.stats().running == 1
        await gen.aclose()
        return req, got
    req, got = asyncio.run(run())
    assert len(got) == 3 and llm.aborted == [req.request_id] and engine.stats().running == 0


def test_deadline_is_a_timeout(tokenizer):
    import time

    from wharf.errors import Timeout
    llm = FakeLLM([[f"w{i} " for i in range(100)]], delay=0.05)
    engine = _engine(llm, tokenizer)
    req = GenerationRequest(model=MODEL, prompt="go", sampling=SamplingParams(max_tokens=100),
                            deadline=time.monotonic() + 0.2)
    with pytest.raises(Timeout):
        asyncio.run(_collect(engine, req))
    assert llm.aborted == [req.request_id]


# -- (2) no vllm here: a clear refusal --------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_serve_without_vllm_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wharf", "serve", "--backend", "vllm", "--port", "1"],
                       env={"WHARF_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "pip install 'wharf[vllm]'" in r.stdout + r.stderr


# -- (3) the real thing, on a GPU ----------------------------------------------------------------

@pytest.mark.skipif(_has_vllm_gpu() is not None, reason=_has_vllm_gpu() or "")
def test_vllm_server_on_gpu(server_factory):
    srv = server_factory(args=["--backend", "vllm"], timeout=900)
    _, key = srv.account("vllm")
    h = {"Authorization": f"Bearer {key}"}
    cards = httpx.get(srv.url + "/v1/models", headers=h).json()["data"]
    assert any(c["id"] == MODEL and c["backend"] == "vllm" for c in cards)
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    full = httpx.post(srv.url + "/v1/completions", json=body, headers=h, timeout=120).json()
    assert full["usage"]["completion_tokens"] >= 1
    text = ""
    with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, headers=h,
                      timeout=120) as r:
        import json
        for line in r.iter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                text += "".join(c["text"] for c in json.loads(line[5:])["choices"])
    assert text == full["choices"][0]["text"]
