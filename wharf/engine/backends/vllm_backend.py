"""vLLM backend: vLLM's AsyncLLMEngine (AsyncLLM in vLLM >= 0.8) in-process, behind the
same interface as wharf.engine.engine.Engine. GPU only; `pip install 'wharf[vllm]'`.

NOT RUN IN WHARF'S CI: the development machines have no GPU and no vllm. The code
follows vLLM's documented API (AsyncEngineArgs, AsyncLLMEngine.from_engine_args,
`generate(prompt, sampling_params, request_id)` yielding cumulative RequestOutputs,
`abort(request_id)`, SamplingParams) and is exercised here only against a stand-in
(tests/scale/test_vllm.py); the real-GPU test in that file skips without vllm and CUDA.

What the gateway needs, and where it comes from:
- tokenization and chat templates: the model's Hugging Face tokenizer, loaded here, so
  prompt counts and window checks are exact and identical to what vLLM sees (prompts are
  passed to vLLM as token ids);
- sampling, batching, paging, stop strings, logprobs: vLLM;
- streaming: vLLM's outputs are cumulative per choice; this module turns them into deltas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from wharf.engine.engine import PreparedRequest, fit_window
from wharf.engine.meter import TokenMeter
from wharf.engine.types import Chunk, EngineStats, FinishReason, GenerationRequest, ModelInfo, TokenLogprob
from wharf.errors import ContextLengthExceeded, Internal, InvalidParam, Overloaded, Timeout

FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


def require_vllm():
    """Import vllm or explain what is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("--backend vllm needs vLLM and a GPU: pip install 'wharf[vllm]'") from exc
    return vllm


class VllmEngine:
    """The Engine interface over one vLLM async engine."""

    def __init__(self, llm, tokenizer, info: ModelInfo, *, sampling_cls, max_queue: int = 0):
        self.llm = llm                      # vllm.AsyncLLMEngine (or anything with the same generate/abort)
        self.tokenizer = tokenizer
        self.info = info
        self.SamplingParams = sampling_cls
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
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

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
        max_tokens = fit_window(len(ids), request.sampling.max_tokens, self.context_length, param)
        return PreparedRequest(request=request, prompt_ids=ids, prompt_text=text, max_tokens=max_tokens)

    def sampling_params(self, prepared: PreparedRequest):
        p = prepared.request.sampling
        kw = dict(n=p.n, max_tokens=prepared.max_tokens, temperature=p.temperature, top_p=p.top_p,
                  top_k=p.top_k if p.top_k > 0 else -1, repetition_penalty=p.repetition_penalty,
                  presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty, seed=p.seed,
                  stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None,
                  ignore_eos=p.ignore_eos, logprobs=p.logprobs)
        return self.SamplingParams(**kw)

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        if self._closed:
            raise Overloaded("the engine is shutting down")
        if self.max_queue and self.running >= self.max_queue:
            raise Overloaded("the engine queue is full")
        req = prepared.request
        n = req.sampling.n
        params = self.sampling_params(prepared)
        prompt_tokens = len(prepared.prompt_ids)
        sent_text = [""] * n
        sent_tokens = [0] * n
        finished = [False] * n
        stream = self.llm.generate({"prompt_token_ids": list(prepared.prompt_ids)}, params, req.request_id)
        self.running += 1
        try:
            while True:
                timeout = None if req.deadline is None else req.deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise Timeout("the request ran past its deadline")
                try:
                    out = await asyncio.wait_for(stream.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise Timeout("the request ran past its deadline") from None
                except ValueError as exc:       # vLLM's validation errors
                    raise InvalidParam(str(exc)) from None
                for c in out.outputs:
                    i = c.index
                    if not 0 <= i < n or finished[i]:
                        continue
                    text = c.text or ""
                    delta = text[len(sent_text[i]):] if text.startswith(sent_text[i]) else ""
                    token_ids = list(c.token_ids)
                    new_ids = token_ids[sent_tokens[i]:]
                    logprobs = self._logprobs(c, sent_tokens[i], token_ids, req.sampling.logprobs)
                    self.meter.add(len(new_ids))
                    if text.startswith(sent_text[i]):
                        sent_text[i] = text
                    sent_tokens[i] = len(token_ids)
                    finish = FINISH.get(c.finish_reason, FinishReason.STOP) if c.finish_reason else None
                    if finish is not None:
                        finished[i] = True
                    if delta or finish is not None or logprobs:
                        yield Chunk(index=i, text=delta, token_ids=new_ids, logprobs=logprobs,
                                    finish_reason=finish, prompt_tokens=prompt_tokens,
                                    completion_tokens=sent_tokens[i])
                if all(finished) or getattr(out, "finished", False):
                    break
            for i in range(n):   # a stream that ended without a finish for some choice
                if not finished[i]:
                    yield Chunk(index=i, finish_reason=FinishReason.STOP, prompt_tokens=prompt_tokens,
                                completion_tokens=sent_tokens[i])
        except (Timeout, InvalidParam, Overloaded):
            raise
        except Exception as exc:
            if type(exc).__name__ in ("AsyncEngineDeadError", "EngineDeadError"):
                raise Overloaded("the vLLM engine is dead; restart the server") from None
            if type(exc).__name__ in ("EngineGenerateError",):
                raise Internal("vLLM failed to generate") from None
            raise
        finally:
            self.running -= 1
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                try:
                    await closer()              # vLLM aborts a request whose generator is closed
                except Exception:
                    pass
            if not all(finished):
                abort = getattr(self.llm, "abort", None)
                if abort is not None:
                    try:
                        await abort(req.request_id)
                    except Exception:
                        pass

    def _logprobs(self, c, start: int, token_ids: list[int], k: int | None) -> list[TokenLogprob] | None:
        """vLLM gives, per generated token, {token_id: Logprob(logprob, rank, decoded_token)}
        holding the top k and the sampled token."""
        lps = getattr(c, "logprobs", None)
        if not lps or k is None:
            return None
        out = []
        for j in range(start, min(len(lps), len(token_ids))):
            entry, tid = lps[j] or {}, token_ids[j]

            def name(t, lp):
                return getattr(lp, "decoded_token", None) or self.tokenizer.decode([t])
            ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", None) or 0)
            chosen = entry.get(tid)
            out.append(TokenLogprob(token=name(tid, chosen), token_id=tid,
                                    logprob=float(chosen.logprob) if chosen is not None else 0.0,
                                    top=[(name(t, lp), t, float(lp.logprob)) for t, lp in ranked[:k]]))
        return out or None

    def stats(self) -> EngineStats:
        return EngineStats(waiting=0, running=self.running, max_batch_size=self.info_max_batch,
                           generated_tokens=self.meter.total, tokens_per_second=self.meter.per_second())

    info_max_batch = 0

    def shutdown(self) -> None:
        self._closed = True
        for name in ("shutdown", "shutdown_background_loop"):
            fn = getattr(self.llm, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:
                    pass
                return


def build_vllm_engine(spec, *, max_model_len: int, max_batch_size: int, dtype: str,
                      engine_args: dict | None = None, cache_dir=None, log=lambda m: None) -> VllmEngine:
    """Start one vLLM engine for a registered model (a Hugging Face folder or hub id, or a
    .gguf file, which is converted to a safetensors folder once, as for the torch backend)."""
    from pathlib import Path

    vllm = require_vllm()
    from transformers import AutoConfig, AutoTokenizer

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
    kw = {"model": model, "max_model_len": window, "max_num_seqs": max_batch_size,
          "dtype": dtype if dtype in ("bfloat16", "float16", "float32") else "auto"}
    kw.update(engine_args or {})
    log(f"starting vLLM for {spec.name} ({model})")
    args = vllm.AsyncEngineArgs(**kw)
    llm = vllm.AsyncLLMEngine.from_engine_args(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    identity = spec.identity or getattr(config, "_name_or_path", "") or path.name
    if Path(identity).is_absolute():
        identity = path.name
    info = ModelInfo(name=spec.name, identity=identity, path=str(spec.path), backend="vllm",
                     context_length=window, dtype=str(getattr(config, "torch_dtype", dtype)).removeprefix("torch."),
                     aliases=list(spec.aliases))
    engine = VllmEngine(llm, tokenizer, info, sampling_cls=vllm.SamplingParams)
    engine.info_max_batch = max_batch_size
    return engine
