"""The engine facade: tokenize and validate a request, run it through the scheduler,
and hand its chunks to asyncio code. No HTTP, no accounts."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass

from wharf.engine.backends.base import ModelRunner
from wharf.engine.detokenize import IncrementalDetokenizer, StopMatcher
from wharf.engine import tool_calls
from wharf.engine.grammar import Grammars, Matcher
from wharf.engine.sampling import SamplerRow, make_generator
from wharf.engine.scheduler import Scheduler
from wharf.engine.sequence import Group, Sequence
from wharf.engine.types import Chunk, EngineStats, GenerationRequest, ModelInfo
from wharf.errors import ContextLengthExceeded, InvalidParam


def fit_window(prompt_tokens: int, max_tokens: int | None, window: int, prompt_param: str, *,
               exact: bool = True) -> int:
    """The number of tokens to generate, or the error that says why the request does not
    fit. None means "whatever the window leaves". With `exact` off (estimated prompt
    counts) an over-long request is let through for the engine behind to judge."""
    if max_tokens is None:
        max_tokens = window - prompt_tokens
        if max_tokens < 1:
            if not exact:
                return 1
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens; the {prompt_param} "
                f"alone has {prompt_tokens} tokens.", param=prompt_param)
    elif max_tokens < 1:
        raise InvalidParam("max_tokens must be at least 1", param="max_tokens")
    elif exact and prompt_tokens + max_tokens > window:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_param}, {max_tokens} "
            f"in the completion). Please reduce the length of the {prompt_param} or completion.",
            param="max_tokens")
    return max_tokens


def fit_request(request: GenerationRequest, prompt_tokens: int, model_window: int, prompt_param: str, *,
                exact: bool = True) -> tuple[int, bool]:
    """(tokens to generate, whether the window cut the API's default) for a request: the
    one window rule for every engine and dialect (fit_window, in the smaller of the
    model's and the API's windows, then the API's default cap when none was asked)."""
    window = min(model_window, request.window or model_window)
    asked = request.sampling.max_tokens
    max_tokens = fit_window(prompt_tokens, asked, window, prompt_param, exact=exact)
    cap = request.default_max_tokens
    if asked is not None or cap is None:
        return max_tokens, False
    return min(max_tokens, cap), max_tokens < cap


@functools.cache
def _longest_token_chars(tokenizer) -> int:
    """How many characters one token of this vocabulary can stand for, at most: its
    spelling in the vocabulary (byte-level or SentencePiece, added tokens too) is never
    shorter than the text it decodes to."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def tokenize_bounded(tokenizer, text: str, window: int, *, special: bool = True) -> list[int]:
    """Token ids of `text`, refusing at once a text too long for any tokenization of it
    to fit `window` tokens: a multi-megabyte prompt costs a length check, not seconds of
    tokenizer time (with the GIL held) before the same refusal."""
    limit = window * _longest_token_chars(tokenizer)
    if len(text) > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {window} tokens; a prompt of {len(text)} characters "
            f"cannot fit it (at most {limit} characters can).", param="prompt")
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def render_with_tools(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """A chat as the model's template renders it, with the generation prompt: tools and
    earlier tool calls by the template itself where it knows them, else in Hermes' form
    (wharf/engine/tool_calls.py); a plain transcript for models without a template."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    native = tool_calls.template_renders_tools(template)
    messages = tool_calls.for_template(messages, tools, native=native)
    if not template:     # base models (Pythia) and upstreams without a local tokenizer
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
    extra = {"tools": tools} if native and tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


@dataclass
class PreparedRequest:
    request: GenerationRequest
    prompt_ids: list[int]
    prompt_text: str
    max_tokens: int
    clamped: bool = False      # the API's default max tokens was cut to what the window leaves
    grammar: object = None     # the compiled grammar of request.structured, if any


class Engine:
    def __init__(self, runner: ModelRunner, tokenizer, info: ModelInfo, *, eos_ids: set[int],
                 max_queue: int, prefill_chunk: int, prefill_threads: int | None = None,
                 decode_threads: int | None = None, prefix_cache_bytes: int = 0):
        self.tokenizer = tokenizer
        self.info = info
        self.grammars = Grammars(tokenizer, runner.vocab_size, eos_ids)
        self.scheduler = Scheduler(runner, tokenizer, eos_ids=eos_ids, max_queue=max_queue,
                                   prefill_chunk=prefill_chunk, prefill_threads=prefill_threads,
                                   decode_threads=decode_threads, prefix_cache_bytes=prefix_cache_bytes)

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return render_with_tools(self.tokenizer, messages, tools)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return tokenize_bounded(self.tokenizer, text, self.context_length, special=special)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Tokenize, check the window and compile the grammar (blocking for a new one: the
        pipeline calls this off the event loop then); raises ContextLengthExceeded /
        InvalidParam."""
        if request.messages is not None:
            text = self.render_chat(request.messages, request.tools)
            ids = self.tokenize(text, special=False)
            prompt_param = "messages"
        else:
            text = request.prompt or ""
            ids = self.tokenize(text)
            prompt_param = "prompt"
        if not ids:  # an empty prompt still needs one position to start from
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.tokenizer.eos_token_id]
        max_tokens, clamped = fit_request(request, len(ids), self.context_length, prompt_param)
        grammar = self.grammars.compile(request.structured) if request.structured is not None else None
        return PreparedRequest(request=request, prompt_ids=ids, prompt_text=text, max_tokens=max_tokens,
                               clamped=clamped, grammar=grammar)

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream chunks of every choice; raises WharfError (Overloaded, Timeout, ...)."""
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        req = prepared.request
        params = req.sampling
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone; nobody is listening
                pass

        group = Group(request_id=req.request_id, prompt_ids=prepared.prompt_ids, params=params,
                      max_tokens=prepared.max_tokens, emit=emit, deadline=req.deadline,
                      tenant=req.tenant)
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            row = SamplerRow(params=params, generator=make_generator(seed),
                             matcher=Matcher(prepared.grammar) if prepared.grammar is not None else None)
            group.seqs.append(Sequence(group=group, index=i, row=row,
                                       detok=IncrementalDetokenizer(self.tokenizer, prepared.prompt_ids),
                                       stops=StopMatcher(params.stop),
                                       token_ids=list(prepared.prompt_ids)))
        self.scheduler.submit(group)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if not group.done:
                self.scheduler.abort(group)

    def stats(self) -> EngineStats:
        return self.scheduler.stats()

    def shutdown(self) -> None:
        self.scheduler.shutdown()
