"""The one error taxonomy.

The engine and the platform raise these; each dialect adapter maps them to its
own API's status codes and bodies exactly once (wharf/api/errors.py). Nothing
here knows about HTTP.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class WharfError(Exception):
    """Base of every error a caller may see. `message` is safe to show."""

    kind = "internal"

    def __init__(self, message: str, *, param: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param      # the offending request field, when there is one
        self.reason = reason    # finer cause inside a kind, e.g. "expired" for AuthError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, reason={self.reason!r})"


class InvalidRequest(WharfError):
    """The body is not a request at all (bad JSON, wrong content type)."""

    kind = "invalid_request"


class InvalidParam(WharfError):
    """A field is missing, of the wrong type or out of range; `param` names it."""

    kind = "invalid_param"


class ContextLengthExceeded(InvalidParam):
    """Prompt tokens + max tokens do not fit in the model's window."""

    kind = "context_length_exceeded"


class AuthError(WharfError):
    """Who is calling could not be established.

    reason: "missing", "invalid" (unknown or wrong credential), "signature",
    "expired" (token or signature past its life), "revoked", "disabled".
    """

    kind = "auth"


class PermissionDenied(WharfError):
    """The caller is known but may not use this resource (e.g. another account's service)."""

    kind = "permission"


class NotFound(WharfError):
    """Unknown model, service or object. `reason` says which ("model", "service", ...)."""

    kind = "not_found"


class Conflict(WharfError):
    """The object already exists (duplicate endpoint, name...)."""

    kind = "conflict"


class RateLimited(WharfError):
    """A rate limit is exhausted. reason: "rpm", "tpm", "qps" or "concurrency"."""

    kind = "rate_limited"

    def __init__(self, message: str, *, reason: str = "rpm", retry_after: float = 1.0, **kw):
        super().__init__(message, reason=reason, **kw)
        self.retry_after = retry_after


class QuotaExceeded(WharfError):
    """The account's daily quota is spent. reason: "daily" or "total"."""

    kind = "quota_exceeded"


class ContentBlocked(WharfError):
    """The safety lexicon matched. reason: "input" or "output"."""

    kind = "content_blocked"
    prompt_tokens: int | None = None    # set on input blocks, for dialects that report usage


class Overloaded(WharfError):
    """The engine's admission queue is full, or the backend is unavailable."""

    kind = "overloaded"


class Timeout(WharfError):
    """The request ran past its deadline."""

    kind = "timeout"


class Internal(WharfError):
    """A bug or an unexpected failure; the message never carries internals."""

    kind = "internal"


def by_kind(table: dict[type, T], exc: WharfError, default: T) -> T:
    """The entry of `exc`'s nearest class in `table` (a dialect's error table), else
    `default`: the one walk over the taxonomy every dialect's mapping uses."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default
