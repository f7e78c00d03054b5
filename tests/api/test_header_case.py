"""Response header names leave the server in canonical case (`Content-Type`), read from the
raw bytes on the wire: HTTP clients fold case, so only a socket shows what the Qianfan
Java SDK's case-sensitive lookup sees."""

from __future__ import annotations

import json
import re
import socket
from urllib.parse import urlparse

from tests.qianfan.conftest import PREFIX, get_token, make_account

CANONICAL = re.compile(rb"^[A-Z0-9][a-z0-9]*(-[A-Z0-9][a-z0-9]*)*$")


def _exchange(server, raw: bytes) -> list[bytes]:
    """Send `raw` on one connection (its last request says close); each answer's head, as sent."""
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=60) as sock:
        sock.sendall(raw)
        buf = b""
        while chunk := sock.recv(65536):
            buf += chunk
    return re.findall(rb"HTTP/1\.1 [0-9]{3} .*?(?=\r\n\r\n)", buf, re.DOTALL)   # no body here holds such text


def _names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]


def _request(method: str, target: str, host: str, body: bytes = b"", close: bool = True) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' if close else ''}\r\n\r\n").encode() + body


def test_every_header_name_is_canonical(server):
    host = urlparse(server.url).netloc
    acct = make_account(server, rpm=100, tpm=100_000)
    token = get_token(server, acct.app_ak, acct.app_sk)
    body = json.dumps({"prompt": "你好", "max_output_tokens": 2}).encode()
    stream = json.dumps({"prompt": "你好", "max_output_tokens": 2, "stream": True}).encode()
    target = f"{PREFIX}/completions/{acct.completions}?access_token={token}"
    # Two requests kept alive on one connection, then a stream, an error, a 404 and a 400.
    heads = _exchange(server, _request("GET", "/health", host, close=False) + _request("POST", target, host, body))
    heads += _exchange(server, _request("POST", target, host, stream))
    heads += _exchange(server, _request("POST", f"{PREFIX}/chat/nosuch?access_token={token}", host, body))
    heads += _exchange(server, _request("GET", "/nothing/here", host))
    heads += _exchange(server, b"GARBAGE\r\n\r\n")
    assert len(heads) == 6, [h.split(b"\r\n")[0] for h in heads]
    names = [n for h in heads for n in _names(h)]
    assert names and all(CANONICAL.match(n) for n in names), heads
    assert all(b"Content-Type" in _names(h) for h in heads[:4]), heads
    assert b"X-Ratelimit-Limit-Requests" in _names(heads[1]) and b"X-Ratelimit-Limit-Tokens" in _names(heads[1])
    assert b"Content-Type: text/event-stream" in heads[2]
