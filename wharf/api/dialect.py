"""The contract each API module fulfils: the paths it owns, its router and its one error
mapping. app.py mounts the routers of the dialects; path_errors.py answers errors made
outside any route (body limit, throttle, a store down) through the owning dialect's
mapping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.responses import Response

from wharf.errors import RateLimited, WharfError


@dataclass(frozen=True)
class Dialect:
    name: str
    prefixes: tuple[str, ...]               # request paths this API owns
    error: Callable[[WharfError], Response]  # the taxonomy in this API's status codes and bodies
    router: APIRouter | None = None         # None: mounted by its own builder (admin API)

    def owns(self, path: str) -> bool:
        return path.startswith(self.prefixes)


def retry_after(exc: WharfError) -> dict[str, str]:
    """Retry-After for a rate-limit refusal, in whole seconds (at least 1); else nothing."""
    return {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, RateLimited) else {}
