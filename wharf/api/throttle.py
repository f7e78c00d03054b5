"""Rate limits on the control plane: the admin API, the console and the OAuth token endpoint.

Every request there costs store work (a key minted, a 30-day token row written, a session
looked up), and nothing bounded it: one tenant minting keys or tokens as fast as it could
slowed every other tenant's requests 5-9x. Two buckets on the same limiter the dialects
use (wharf/platform/limits.py: in memory, or Redis shared by replicas), checked before the
route runs and before any authentication:

- per credential presented: the admin API's `Authorization` value, the console's session
  cookie, the OAuth client id + secret. Only a hash of it keys the bucket, and it is not
  verified here, so someone without the secret cannot spend its owner's budget;
- per client IP, across the whole control plane, against guessing (every wrong guess is
  a fresh "credential"). The console's own calls to the admin API come from this very
  server, on behalf of a user already counted at the console, and carry a per-process
  token (PROXY_HEADER) that spares them the IP bucket (never the credential one).

A refusal is a 429 with Retry-After in the owning API's shape (OAuth: `slow_down`). If the
limiter itself fails (Redis down), the request goes through: the control plane stays usable
for an admin in an outage, and the dialects' own limits fail closed as before.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from urllib.parse import parse_qs

from wharf.api.path_errors import error_for_path
from wharf.errors import RateLimited
from wharf.platform.limits import Limiter, Limits

log = logging.getLogger("wharf.throttle")

PROXY_HEADER = b"x-wharf-console-proxy"
_PREFIX = "ctl:"
_WARN_EVERY_S = 60.0


def _group(path: str) -> str | None:
    if path.startswith("/admin/"):
        return "admin"
    if path == "/oauth/2.0/token":
        return "oauth"
    if path.startswith("/console") and not path.startswith("/console/static/"):
        return "console"
    return None


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\x00".join(parts)).hexdigest()[:32]


def _credential(group: str, scope) -> str | None:
    """A hash of the credential the request presents (not checked: that is the route's job)."""
    headers = scope["headers"]
    if group == "admin":
        value = next((v for k, v in headers if k == b"authorization"), b"")
        return _digest(value) if value.strip() else None
    if group == "console":
        for k, v in headers:
            if k == b"cookie":
                for part in v.split(b";"):
                    name, _, value = part.strip().partition(b"=")
                    if name == b"wharf_console" and value:
                        return _digest(value)
        return None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    client_id = (query.get("client_id") or [""])[0]
    if not client_id:
        return None
    return _digest(client_id.encode(), (query.get("client_secret") or [""])[0].encode())


class ControlThrottle:
    def __init__(self, app, limiter: Limiter, *, per_credential: dict[str, Limits | None],
                 per_ip: Limits | None, proxy_token: str):
        """per_credential: group ("admin", "console", "oauth") -> its bucket's Limits."""
        self.app = app
        self.limiter = limiter
        self.per_credential = per_credential
        self.per_ip = per_ip
        self.proxy_token = proxy_token.encode()
        self._warned = 0.0

    async def __call__(self, scope, receive, send):
        group = _group(scope["path"]) if scope["type"] == "http" else None
        if group is None:
            return await self.app(scope, receive, send)
        scopes = []
        if self.per_ip is not None and not self._from_console(scope):
            client = scope.get("client")
            scopes.append((f"{_PREFIX}ip:{client[0] if client else '-'}", self.per_ip))
        per_credential = self.per_credential.get(group)
        ident = _credential(group, scope) if per_credential is not None else None
        if ident is not None:
            scopes.append((f"{_PREFIX}{group}:{ident}", per_credential))
        try:
            if scopes:
                await self.limiter.aacquire(scopes)
        except RateLimited as exc:
            retry = max(1, round(exc.retry_after))
            refused = RateLimited(f"too many requests to the {group} API; retry after {retry} s",
                                  reason=exc.reason, retry_after=exc.retry_after)
            return await error_for_path(scope["path"], refused)(scope, receive, send)
        except Exception as exc:        # the limiter is down: let the request through (see above)
            now = time.monotonic()
            if now - self._warned > _WARN_EVERY_S:
                self._warned = now
                log.warning("control-plane throttle unavailable, not limiting: %s",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        await self.app(scope, receive, send)

    def _from_console(self, scope) -> bool:
        value = next((v for k, v in scope["headers"] if k == PROXY_HEADER), None)
        return value is not None and hmac.compare_digest(value, self.proxy_token)


def control_limits(rpm: int, qps: int) -> Limits | None:
    """Settings (0: off) -> the Limits of one bucket, or None when both are off."""
    if not rpm and not qps:
        return None
    return Limits(rpm=rpm or None, qps=qps or None)
