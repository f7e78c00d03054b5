"""One id per HTTP request: the X-Request-Id header of every answer and, for a request
that passed authentication, the key of its usage record (wharf/platform/request_log.py).

A dialect names its request once it knows the caller, in its own id format (Qianfan
`as-...`, OpenAI `chatcmpl-...`), with `name_request`; the body's id, the header and the
record are then one string, so an operator finds a request by whatever the client kept.
Answers nothing named (a failed authentication, /health, the admin API) get a random id
in the header only: they have no record.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_KEY = "wharf_request_id"


def name_request(request: Request, request_id: str) -> str:
    """Make `request_id` this request's id (header and record); returns it."""
    request.scope.setdefault("state", {})[_KEY] = request_id
    return request_id


class RequestIds:
    """Adds X-Request-Id to every HTTP answer: the id a dialect named, else a fresh one.
    The header is set when the answer starts, so a stream carries it too."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                rid = state.get(_KEY) or uuid.uuid4().hex
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode("latin-1", "replace"))]}
            await send(message)

        await self.app(scope, receive, send_with_id)
