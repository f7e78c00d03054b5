"""One request-body limit for every route, enforced before the app sees the request.

A declared Content-Length over the limit is refused before a byte of the body is read;
a body without one (chunked) is read here, counting, and refused the moment the count
passes the limit, so at most `max_bytes` (plus one chunk) is ever held. Either way no
route, no parser and no authentication runs for it: an unauthenticated 400 MB
`POST /admin/api/accounts` costs a header check. The answer is the owning API's own
(OpenAI 413, Qianfan 336001, WeLM 400, SenseNova 400, JSON 413 elsewhere).

It also ends quietly a request whose client went away mid-body (Starlette raises
ClientDisconnect from the route; nobody is left to answer, so no traceback either).
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect

from wharf.api.path_errors import error_for_path
from wharf.errors import InvalidRequest


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.max_bytes <= 0:
            return await self.app(scope, receive, send)
        declared, chunked = None, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = True
        gone = False

        async def watched():
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        app_receive = watched
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(scope, send)
        if chunked or declared == -1:
            body, size = [], 0
            while True:
                message = await watched()
                if message["type"] == "http.disconnect":
                    return                       # the client left: nothing to answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    return await self._refuse(scope, send)
                body.append(chunk)
                if not message.get("more_body", False):
                    break
            app_receive = _replay(b"".join(body), watched)
        try:
            await self.app(scope, app_receive, send)
        except ClientDisconnect:
            if not gone:
                raise

    async def _refuse(self, scope, send):
        exc = InvalidRequest(f"request body is larger than {self.max_bytes} bytes", reason="too_large")
        response = error_for_path(scope["path"], exc)
        # The rest of the body is never handed to anyone; the server discards it as it comes.
        await response(scope, _no_body, send)


def _replay(body: bytes, receive):
    """The body read here, as one message; after it, the client's own receive (so the
    app still sees a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}
