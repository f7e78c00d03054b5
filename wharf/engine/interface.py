"""What the API layer may ask of an engine. The embedded engine (engine.LocalEngine),
vLLM in process (external/vllm_backend.py) and upstream servers (external/upstream.py)
each implement it; the pipeline and the app know only this."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from wharf.engine.prompt import PreparedRequest
from wharf.engine.types import Chunk, EngineStats, GenerationRequest, ModelInfo


class Engine(Protocol):
    info: ModelInfo
    tokenizer: object | None     # None: an upstream that counts tokens for itself

    @property
    def context_length(self) -> int: ...

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str: ...

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids as the model sees them; InvalidParam where there is no local tokenizer."""

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Render, count and fit the prompt (prompt.prepare_prompt); may block (a grammar to
        compile), so the pipeline calls it off the event loop for such requests."""

    def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        """Every choice's chunks; raises WharfError (Overloaded, Timeout, ...)."""

    def stats(self) -> EngineStats: ...

    def shutdown(self) -> None: ...
