"""The error taxonomy mapped to each dialect's status codes and bodies, once."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from wharf import errors as E
from wharf.api.dialect import retry_after

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


def openai_error(exc: E.WharfError) -> JSONResponse:
    status, etype, code = E.by_kind(_OPENAI, exc, _OPENAI[E.Internal])
    if isinstance(exc, E.NotFound) and exc.reason == "model":
        code = "model_not_found"
    if isinstance(exc, E.InvalidRequest) and exc.reason == "too_large":
        status = 413
    body = {"error": {"message": exc.message, "type": etype, "param": exc.param, "code": code}}
    return JSONResponse(body, status_code=status, headers=retry_after(exc))
