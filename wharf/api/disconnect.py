"""Stop work nobody waits for: a non-streamed answer whose client hung up.

A stream notices a departed client at its next write; a non-streamed answer writes
nothing until it is complete, so without this it would generate to max_tokens and be
billed in full. Once the body has been read, the ASGI server's next `receive` message is
`http.disconnect`, sent when the connection closes: waiting for it beside the answer
lets us cancel the answer at once (the engine aborts its sequences within a step, and the
run settles as `cancelled`, with what was generated)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

T = TypeVar("T")

# nginx's "client closed request": nobody reads it, but access logs show what happened.
CLIENT_GONE = 499


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def _hangup(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientGone."""
    answer = asyncio.ensure_future(work)
    hangup = asyncio.ensure_future(_hangup(request))
    try:
        await asyncio.wait({answer, hangup}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:     # the handler itself was cancelled (shutdown)
        answer.cancel()
        raise
    finally:
        hangup.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    try:
        await answer
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientGone


def gone_response() -> Response:
    return Response(status_code=CLIENT_GONE)
