"""Response header names on the wire in canonical case (`Content-Type`, `X-Ratelimit-Limit-Requests`).

HTTP/1.1 header names are case-insensitive, but not every client reads them so: the
Qianfan Java SDK copies them into a case-sensitive map and looks up `Content-Type`
(WIRE.md), and real Baidu endpoints send that case. Starlette and uvicorn lowercase
every name, uvicorn's httptools protocol as it writes the head, so no ASGI middleware
can undo it. Here, a subclass of that protocol hands each request-response cycle a
transport whose first non-1xx write (uvicorn writes a response head as one buffer,
before any body byte) has its header names recased; every later write passes through.
"""

from __future__ import annotations

import functools

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:                      # no httptools: uvicorn's own parser, lowercase names
    HttpToolsProtocol = None


@functools.lru_cache(maxsize=512)
def canonical_name(name: bytes) -> bytes:
    """`x-ratelimit-limit-requests` -> `X-Ratelimit-Limit-Requests` (Go's CanonicalMIMEHeaderKey)."""
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


def canonical_head(head: bytes) -> bytes:
    """A response head (status line, header lines, blank line) with its names recased."""
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        name, sep, rest = lines[i].partition(b":")
        if sep:
            lines[i] = canonical_name(name) + sep + rest
    return b"\r\n".join(lines)


class _HeadWriter:
    """The cycle's transport: recases the response head, then gets out of the way."""

    __slots__ = ("_head_done", "_transport")

    def __init__(self, transport):
        self._transport = transport
        self._head_done = False

    def write(self, data: bytes) -> None:
        if not self._head_done and not data.startswith(b"HTTP/1.1 1"):    # 100 Continue has no headers
            self._head_done = True
            data = canonical_head(data)
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:
    class CanonicalHeadersProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:      # a new request (not an upgrade): its task has not run yet
                self.cycle.transport = _HeadWriter(self.cycle.transport)

        def send_400_response(self, msg: str) -> None:
            transport, self.transport = self.transport, _HeadWriter(self.transport)
            try:
                super().send_400_response(msg)
            finally:
                self.transport = transport
else:
    CanonicalHeadersProtocol = None
