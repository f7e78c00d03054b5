"""Answers made before or outside any route (body limit, throttle, the store or Redis
unavailable), in the shape of the API that owns the path. It sits above the dialects,
which know nothing of each other or of paths."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from wharf import errors as E
from wharf.api.errors import openai_error
from wharf.api.qianfan import qianfan_error
from wharf.api.sensenova import sensenova_error
from wharf.api.welm import welm_error

# The admin API and console shape ({"error": {"message", "type", "param"}}) by kind.
_PLAIN_STATUS: dict[type, int] = {E.RateLimited: 429, E.Overloaded: 503, E.AuthError: 401,
                                  E.PermissionDenied: 403, E.NotFound: 404, E.InvalidRequest: 400,
                                  E.InvalidParam: 400, E.Timeout: 504}
# OAuth's own shape ({"error", "error_description"}): what the qianfan SDK reads.
_OAUTH: dict[type, tuple[int, str]] = {E.RateLimited: (429, "slow_down"),
                                       E.Overloaded: (503, "temporarily_unavailable"),
                                       E.InvalidRequest: (400, "invalid_request")}


def _too_large(exc: E.WharfError) -> bool:
    return isinstance(exc, E.InvalidRequest) and exc.reason == "too_large"


def _retry_after(exc: E.WharfError) -> dict:
    return {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, E.RateLimited) else {}


def error_for_path(path: str, exc: E.WharfError) -> Response:
    """`exc` answered as the API that owns `path` answers it (for middleware and app-level
    handlers that run outside any route): Qianfan HTTP 200 + error_code, WeLM, SenseNova,
    OAuth, the admin API / console shape, else OpenAI's."""
    if path.startswith(("/rpc/2.0/ai_custom", "/wenxinworkshop")):
        return qianfan_error(exc, headers=_retry_after(exc) or None)
    if path.startswith("/welm/"):
        return welm_error(exc)
    if path.startswith("/v1/llm/"):
        return sensenova_error(exc)
    if path.startswith("/oauth/"):
        status, code = next((_OAUTH[c] for c in type(exc).__mro__ if c in _OAUTH), (500, "server_error"))
        if _too_large(exc):
            status = 413
        return JSONResponse({"error": code, "error_description": exc.message}, status_code=status,
                            headers=_retry_after(exc))
    if path.startswith(("/admin/", "/console")):
        status = 413 if _too_large(exc) else next(
            (_PLAIN_STATUS[c] for c in type(exc).__mro__ if c in _PLAIN_STATUS), 500)
        return JSONResponse({"error": {"message": exc.message, "type": exc.kind, "param": exc.param}},
                            status_code=status, headers={**_retry_after(exc), "Cache-Control": "no-store"})
    return openai_error(exc)
