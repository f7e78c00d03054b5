"""The error taxonomy mapped to each dialect's status codes and bodies, once."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse, Response

from wharf import errors as E

log = logging.getLogger("wharf.api")


def unexpected(exc: Exception) -> E.Internal:
    """An error no dialect expected while reading and translating a request (a bug, not
    the caller's fault): logged with its traceback and turned into Internal, which the
    dialect answers in its own shape and records like any refusal (Pipeline.reject),
    instead of a bare text/plain 500 with no usage record. A client that went away
    (ClientDisconnect) and the store being unavailable (DBAPIError: the app's 503) are
    raised again unchanged."""
    from sqlalchemy.exc import DBAPIError
    from starlette.requests import ClientDisconnect

    if isinstance(exc, (ClientDisconnect, DBAPIError)):
        raise exc
    log.error("unexpected error while reading a request", exc_info=exc)
    return E.Internal("internal error while reading the request")


# -- OpenAI ----------------------------------------------------------------------------
# The openai SDK retries 408/409/429/5xx, so a caller's own mistake is never one of those.
_OPENAI: dict[type, tuple[int, str, str | None]] = {
    E.ContextLengthExceeded: (400, "invalid_request_error", "context_length_exceeded"),
    E.InvalidRequest: (400, "invalid_request_error", None),
    E.InvalidParam: (400, "invalid_request_error", None),
    E.AuthError: (401, "invalid_request_error", "invalid_api_key"),
    E.PermissionDenied: (403, "permission_error", None),
    E.NotFound: (404, "invalid_request_error", None),
    E.Conflict: (400, "invalid_request_error", "conflict"),
    E.RateLimited: (429, "requests", "rate_limit_exceeded"),
    E.QuotaExceeded: (429, "insufficient_quota", "insufficient_quota"),
    E.ContentBlocked: (400, "invalid_request_error", "content_policy_violation"),
    E.Overloaded: (503, "server_error", "overloaded"),
    E.Timeout: (504, "server_error", "timeout"),
    E.Internal: (500, "server_error", None),
}


def _lookup(table: dict, exc: E.WharfError):
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return table[E.Internal]


def openai_error(exc: E.WharfError) -> JSONResponse:
    status, etype, code = _lookup(_OPENAI, exc)
    if isinstance(exc, E.NotFound) and exc.reason == "model":
        code = "model_not_found"
    if isinstance(exc, E.InvalidRequest) and exc.reason == "too_large":
        status = 413
    headers = {}
    if isinstance(exc, E.RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    body = {"error": {"message": exc.message, "type": etype, "param": exc.param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- by path: answers made before (or outside) a route, in the shape of the API owning it --

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
        from wharf.api.qianfan import _error
        return _error(exc, headers=_retry_after(exc) or None)
    if path.startswith("/welm/"):
        from wharf.api.welm import welm_error
        return welm_error(exc)
    if path.startswith("/v1/llm/"):
        from wharf.api.sensenova import sensenova_error
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
