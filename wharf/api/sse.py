"""One streaming helper: Server-Sent Events framed the way each client parses them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse


def dumps(obj) -> str:
    # ensure_ascii=False: Chinese travels as UTF-8, not \u escapes; compact separators.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def event(obj, *, space: bool = True) -> bytes:
    """`data: {json}\\n\\n`. SenseNova's SDK wants no space after the colon."""
    payload = obj if isinstance(obj, str) else dumps(obj)
    return f"data:{' ' if space else ''}{payload}\n\n".encode()


def sse_response(body: AsyncIterator[bytes], headers: dict | None = None) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                      **(headers or {})})
