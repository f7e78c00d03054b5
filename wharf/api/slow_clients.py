"""Slow and greedy HTTP clients: header and body read timeouts, a connection cap.

uvicorn has the cap (`limit_concurrency`: beyond it a request gets 503) and the idle
time between two requests of a kept-alive connection (`timeout_keep_alive`), and nothing
else: a connection that trickles its headers, or its body, one byte every few seconds
stays open for ever (32 + 32 such sockets were all still open after 70 s). What is
missing lives here, in a subclass of uvicorn's httptools protocol (the parser
`uvicorn[standard]` brings and uvicorn picks by default), by way of header_case.py's
(canonical response header names):

- headers: the request line and headers must be complete within `header_timeout_s` of
  the connection opening or of the next request's first byte, and no larger than
  `max_header_bytes` (else 408 / 431, and the connection is closed);
- body: rules of Apache's mod_reqtimeout (`body=10,MinRate=4096`): a body may stall at
  most `body_timeout_s`, and all of it must arrive within `body_timeout_s` plus 1 s per
  `body_min_rate` bytes received, so anything slower than that floor is cut (408 if no
  answer has begun, else the connection is just closed). Time in which the server, not
  the client, holds the body up (reading paused because the app has not read what came,
  or a `100 Continue` not yet sent) does not count.

A cut request's ASGI task sees the client as gone (`http.disconnect`), like any
disconnect; it answers no one.
"""

from __future__ import annotations

import json
import logging
import resource

from wharf.api.header_case import CanonicalHeadersProtocol

log = logging.getLogger("wharf.http")


def server_options(settings) -> dict:
    """Keyword arguments for uvicorn.run from Settings."""
    opts = {"timeout_keep_alive": settings.keep_alive_s,
            "limit_concurrency": settings.max_connections or None}
    protocol = guarded_protocol(header_timeout_s=settings.header_timeout_s,
                                max_header_bytes=settings.max_header_bytes,
                                body_timeout_s=settings.body_timeout_s, body_min_rate=settings.body_min_rate)
    if protocol is not None:
        opts["http"] = protocol
    else:
        log.warning("httptools is not installed: no header/body read timeouts and lowercase response header "
                    "names (pip install 'uvicorn[standard]')")
    return opts


def raise_fd_limit(connections: int) -> None:
    """Make room for `connections` sockets plus files and the database (soft limit up to the hard one)."""
    want = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass
        if new < want:
            log.warning("open-file limit %d is below max_connections %d + 256", new, connections)


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "request_timeout" if status == 408 else
                                 "invalid_request_error", "param": None, "code": None}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def guarded_protocol(*, header_timeout_s: float, max_header_bytes: int, body_timeout_s: float,
                     body_min_rate: int):
    """A subclass of uvicorn's httptools protocol with these limits (0: that guard off), or
    None without httptools."""
    if CanonicalHeadersProtocol is None:
        return None
    return type("GuardedHttpToolsProtocol", (_Guarded,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
                 "body_timeout_s": body_timeout_s, "body_min_rate": body_min_rate})


if CanonicalHeadersProtocol is not None:
    class _Guarded(CanonicalHeadersProtocol):
        header_timeout_s = 10.0
        max_header_bytes = 64 * 1024
        body_timeout_s = 10.0
        body_min_rate = 4096

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._phase = "idle"            # idle | head | body | done (cut or upgraded)
            self._timer = None
            self._head_bytes = 0
            self._body_bytes = 0
            self._body_start = self._body_last = self._last_tick = 0.0

        # -- phases, from uvicorn's and the parser's callbacks
        def connection_made(self, transport):
            super().connection_made(transport)
            self._start_head()

        def connection_lost(self, exc):
            self._cancel()
            self._phase = "done"
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase == "idle" and (self.cycle is None or self.cycle.response_complete):
                self._start_head()          # the first byte of the next request on a kept-alive connection
            if self._phase == "head":
                self._head_bytes += len(data)
            super().data_received(data)
            if (self._phase == "head" and self.max_header_bytes and self._head_bytes > self.max_header_bytes
                    and not self.transport.is_closing()):
                self._refuse(431, "Request Header Fields Too Large",
                             f"request line and headers are larger than {self.max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase != "head":       # a pipelined request's first byte
                self._start_head()

        def on_headers_complete(self) -> None:
            self._cancel()
            self._phase = "body"
            self._body_bytes = 0
            self._body_start = self._body_last = self._last_tick = self.loop.time()
            if self.body_timeout_s:
                self._timer = self.loop.call_later(self._tick_s(), self._check_body)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            self._body_last = self.loop.time()
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self._phase == "body":
                self._cancel()
                self._phase = "idle"

        def handle_websocket_upgrade(self) -> None:
            self._cancel()
            self._phase = "done"
            super().handle_websocket_upgrade()

        # -- timers
        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _tick_s(self) -> float:
            return min(1.0, self.body_timeout_s / 4)

        def _start_head(self) -> None:
            self._cancel()
            self._phase = "head"
            self._head_bytes = 0
            if self.header_timeout_s:
                self._timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

        def _head_expired(self) -> None:
            self._timer = None
            if self._phase != "head" or self.transport.is_closing():
                return
            self._refuse(408, "Request Timeout", f"request headers not complete within {self.header_timeout_s:g} s")

        def _check_body(self) -> None:
            self._timer = None
            if self._phase != "body" or self.transport.is_closing():
                return
            now = self.loop.time()
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                self._body_start += now - self._last_tick   # the server holds the body up, not the client
                self._body_last = now
            self._last_tick = now
            allowed = self.body_timeout_s + (self._body_bytes / self.body_min_rate if self.body_min_rate else 1e18)
            if now - self._body_last > self.body_timeout_s or now - self._body_start > allowed:
                self._refuse(408, "Request Timeout",
                             f"request body too slow ({self._body_bytes} bytes in {now - self._body_start:.0f} s)")
                return
            self._timer = self.loop.call_later(self._tick_s(), self._check_body)

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """Answer `status` unless an answer has begun, and close the connection."""
            self._cancel()
            self._phase = "done"
            client = "%s:%d" % self.client if self.client else "?"
            log.info("%s: %s; connection closed (%d)", client, message, status)
            cycle = self.cycle
            in_flight = cycle is not None and not cycle.response_complete
            if in_flight:
                started = cycle.response_started
                cycle.disconnected = True     # its app now sees the client gone; its answer goes nowhere
                cycle.message_event.set()
            if not (in_flight and started):
                self.transport.write(_raw_response(status, reason, message))
            self.transport.close()
