"""One streaming helper: Server-Sent Events framed the way each client parses them, and
the rule that a streamed run ends with its response, however the response ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from starlette.responses import StreamingResponse

if TYPE_CHECKING:
    from wharf.api.pipeline import Run


def dumps(obj) -> str:
    # ensure_ascii=False: Chinese travels as UTF-8, not \u escapes; compact separators.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def event(obj, *, space: bool = True) -> bytes:
    """`data: {json}\\n\\n`. SenseNova's SDK wants no space after the colon."""
    payload = obj if isinstance(obj, str) else dumps(obj)
    return f"data:{' ' if space else ''}{payload}\n\n".encode()


class _RunStream(StreamingResponse):
    """A stream that closes its body, and ends its run, when it ends. A client that leaves
    while a chunk is being sent leaves the body generator suspended at a `yield`, and
    nothing else would close it before the garbage collector does."""

    def __init__(self, body: AsyncIterator[bytes], run: Run | None, headers: dict):
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: the client's departure cancels this task, and the engine's work
            # must stop and the usage be written all the same.
            with anyio.CancelScope(shield=True):
                try:
                    await self.body_iterator.aclose()
                finally:
                    if self.run is not None:
                        await self.run.aclose()


def sse_response(body: AsyncIterator[bytes], headers: dict | None = None, *,
                 run: Run | None = None) -> StreamingResponse:
    """`body`'s events as a response; `run`: the run they come from, ended with it."""
    return _RunStream(body, run, {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
