"""The engine facade: tokenize and validate a request, run it through the scheduler,
and hand its chunks to asyncio code. No HTTP, no accounts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from wharf.engine.detokenize import IncrementalDetokenizer, StopMatcher
from wharf.engine.grammar import Grammars, Matcher
from wharf.engine.prompt import PreparedRequest, PromptSide, prepare_prompt
from wharf.engine.runners.base import ModelRunner
from wharf.engine.sampling import SamplerRow, make_generator
from wharf.engine.scheduler import Scheduler
from wharf.engine.sequence import Group, Sequence
from wharf.engine.types import Chunk, EngineStats, GenerationRequest, ModelInfo


class LocalEngine(PromptSide):
    """The embedded engine: Wharf's own scheduler over a model runner in this process."""

    def __init__(self, runner: ModelRunner, tokenizer, info: ModelInfo, *, eos_ids: set[int],
                 max_queue: int, prefill_chunk: int, prefill_threads: int | None = None,
                 decode_threads: int | None = None, prefix_cache_bytes: int = 0):
        self.tokenizer = tokenizer
        self.info = info
        self.grammars = Grammars(tokenizer, runner.vocab_size, eos_ids)
        self.scheduler = Scheduler(runner, tokenizer, eos_ids=eos_ids, max_queue=max_queue,
                                   prefill_chunk=prefill_chunk, prefill_threads=prefill_threads,
                                   decode_threads=decode_threads, prefix_cache_bytes=prefix_cache_bytes)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Tokenize, check the window and compile the grammar (blocking for a new one: the
        pipeline calls this off the event loop then); raises ContextLengthExceeded /
        InvalidParam."""
        prepared = prepare_prompt(request, self.tokenizer, self.context_length)
        if request.structured is not None:
            prepared.grammar = self.grammars.compile(request.structured)
        return prepared

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
