"""vLLM backend: vLLM's async engine in Wharf's process, behind the same interface as
wharf.engine.engine.Engine. GPU only; install: docs/deploy.md.

NEVER RUN ON A GPU, NOR AGAINST A REAL vLLM: the development machines and CI have neither
(tests/scale/test_vllm.py runs it against a stand-in; its real-GPU test skips). What was
checked, by reading source rather than running it, is vLLM 0.33.0 (the PyPI wheel,
`vllm/_version.py` commit g4ba787ec9):
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
Unverified: everything that needs a GPU (start-up, a real stream, memory, tensor
parallelism), and every vLLM version but 0.33.0. Older ones are kept working only where
it costs a line (top_k -1, ValueError as a validation error, `shutdown_background_loop`);
the module needs at least `RequestOutputKind.DELTA` and `AsyncLLMEngine.from_engine_args`.

What the gateway needs, and where it comes from:
- tokenization and chat templates: the model's Hugging Face tokenizer, loaded here, so
  prompt counts and window checks are exact and identical to what vLLM sees (prompts are
  passed to vLLM as token ids);
- sampling, batching, paging, stop strings, logprobs: vLLM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from wharf.engine.engine import PreparedRequest, fit_request, tokenize_bounded
from wharf.engine.meter import TokenMeter
from wharf.engine.types import Chunk, EngineStats, FinishReason, GenerationRequest, ModelInfo, TokenLogprob
from wharf.errors import Internal, InvalidParam, Overloaded, Timeout

FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED,
          "repetition": FinishReason.STOP}


def require_vllm():
    """Import vllm or explain what is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("--backend vllm needs vLLM and a GPU: uv pip install -e '.[vllm]' "
                           "--override docs/vllm-overrides.txt (docs/deploy.md)") from exc
    return vllm


def wharf_error(exc: BaseException) -> BaseException:
    """The Wharf error for an exception vLLM raised (matched by class name, so that no
    vllm import is needed), or `exc` itself when it is none of vLLM's."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"EngineDeadError", "AsyncEngineDeadError"}:
        return Overloaded("the vLLM engine is dead; restart the server")
    if names & {"GracefulHTTPError", "RetryableRequestError"}:    # queue limits, retryable failures
        return Overloaded(getattr(exc, "message", None) or str(exc) or "the vLLM engine is busy")
    if "VLLMClientError" in names or isinstance(exc, ValueError):   # ValueError: older vLLM
        return InvalidParam(str(exc), param=getattr(exc, "parameter", None))
    if names & {"EngineGenerateError", "VLLMServerError"}:
        return Internal("vLLM failed to generate")
    return exc


class VllmEngine:
    """The Engine interface over one vLLM async engine."""

    def __init__(self, llm, tokenizer, info: ModelInfo, *, sampling_cls, delta_kind, max_queue: int = 0):
        self.llm = llm                      # vllm.AsyncLLMEngine (AsyncLLM), or anything with its generate/abort
        self.tokenizer = tokenizer
        self.info = info
        self.SamplingParams = sampling_cls
        self.delta_kind = delta_kind        # vllm.sampling_params.RequestOutputKind.DELTA
        self.max_queue = max_queue          # 0: vLLM queues without bound
        self.running = 0
        self.meter = TokenMeter()
        self._closed = False

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def render_chat(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return tokenize_bounded(self.tokenizer, text, self.context_length, special=special)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        if request.messages is not None:
            text, param = self.render_chat(request.messages), "messages"
            ids = self.tokenize(text, special=False)
        else:
            text, param = request.prompt or "", "prompt"
            ids = self.tokenize(text)
        if not ids:
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.tokenizer.eos_token_id]
        max_tokens, clamped = fit_request(request, len(ids), self.context_length, param)
        return PreparedRequest(request=request, prompt_ids=ids, prompt_text=text, max_tokens=max_tokens,
                               clamped=clamped)

    def sampling_params(self, prepared: PreparedRequest):
        """vLLM's SamplingParams; raises InvalidParam for what vLLM rejects."""
        p = prepared.request.sampling
        kw = dict(n=p.n, max_tokens=prepared.max_tokens, temperature=p.temperature, top_p=p.top_p,
                  top_k=p.top_k if p.top_k > 0 else -1, repetition_penalty=p.repetition_penalty,
                  presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty, seed=p.seed,
                  stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None,
                  ignore_eos=p.ignore_eos, logprobs=p.logprobs, output_kind=self.delta_kind)
        try:
            return self.SamplingParams(**kw)
        except Exception as exc:
            err = wharf_error(exc)
            if err is exc:
                raise
            raise err from None

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        if self._closed:
            raise Overloaded("the engine is shutting down")
        if self.max_queue and self.running >= self.max_queue:
            raise Overloaded("the engine queue is full")
        req = prepared.request
        n, k = req.sampling.n, req.sampling.logprobs
        params = self.sampling_params(prepared)
        prompt_tokens = len(prepared.prompt_ids)
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
        self.running += 1
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
                    err = wharf_error(exc)
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
            self.running -= 1
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
        return EngineStats(waiting=0, running=self.running, max_batch_size=self.info_max_batch,
                           generated_tokens=self.meter.total, tokens_per_second=self.meter.per_second())

    info_max_batch = 0

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
                      engine_args: dict | None = None, cache_dir=None, log=lambda m: None) -> VllmEngine:
    """Start one vLLM engine for a registered model (a Hugging Face folder or hub id, or a
    .gguf file, which is converted to a safetensors folder once, as for the torch backend)."""
    from pathlib import Path

    vllm = require_vllm()
    from transformers import AutoConfig, AutoTokenizer
    from vllm.sampling_params import RequestOutputKind

    path = Path(str(spec.path)).expanduser()
    model = str(path)
    if path.suffix == ".gguf":
        from wharf.engine.loader import _convert_gguf, _gguf_cache_dir
        folder = _gguf_cache_dir(path, Path(cache_dir))
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, folder, log)
        model = str(folder)
    config = AutoConfig.from_pretrained(model)
    window = min(getattr(config, "max_position_embeddings", None) or max_model_len, max_model_len)
    kw = {"model": model, "max_model_len": window,
          "dtype": dtype if dtype in ("bfloat16", "float16", "float32") else "auto"}
    if max_batch_size:       # else vLLM's own default (128 on CPU), not the embedded engine's 32
        kw["max_num_seqs"] = max_batch_size
    kw.update(engine_args or {})
    log(f"starting vLLM for {spec.name} ({model})")
    llm = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**kw))
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
    engine = VllmEngine(llm, tokenizer, info, sampling_cls=vllm.SamplingParams,
                        delta_kind=RequestOutputKind.DELTA)
    scheduler_config = getattr(getattr(llm, "vllm_config", None), "scheduler_config", None)
    engine.info_max_batch = getattr(scheduler_config, "max_num_seqs", None) or kw.get("max_num_seqs") or 0
    return engine
