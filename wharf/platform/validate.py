"""Small input checks shared by the platform modules (raise InvalidParam)."""

from __future__ import annotations

import re

from wharf.errors import InvalidParam

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def name(value, param: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidParam(f"{param} must be 1-64 characters of letters, digits, '_', '.', '@', '-'",
                           param=param)
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def has_lone_surrogate(value: str) -> bool:
    """A lone UTF-16 surrogate (JSON "\\ud800" decodes to one): no UTF-8 encoding exists,
    so the tokenizer, the store and every encoder would fail on it."""
    return not value.isascii() and _SURROGATE.search(value) is not None


def json_text(obj, raw: bytes | None = None, param: str = "") -> None:
    """Raise InvalidParam if any string (or key) of a parsed JSON value holds a lone
    surrogate. With `raw` (the bytes it was parsed from, valid UTF-8), the walk is skipped
    unless they contain a \\uD800-\\uDFFF escape, the only way a surrogate gets in."""
    if raw is not None and _ESCAPED_SURROGATE.search(raw) is None:
        return
    stack = [(obj, param)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if has_lone_surrogate(v):
                raise InvalidParam(f"{where or 'body'}: a string holds a lone UTF-16 surrogate "
                                   "(not valid Unicode text)", param=where or None)
        elif isinstance(v, dict):
            for k, item in v.items():
                key = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and has_lone_surrogate(k):
                    raise InvalidParam(f"{where or 'body'}: a key holds a lone UTF-16 surrogate "
                                       "(not valid Unicode text)", param=where or None)
                stack.append((item, key))
        elif isinstance(v, list):
            stack.extend((item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(v))


def text(value, param: str, max_len: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParam(f"{param} must be a string", param=param)
    if len(value) > max_len:
        raise InvalidParam(f"{param} is longer than {max_len} characters", param=param)
    if has_lone_surrogate(value):
        raise InvalidParam(f"{param} holds a lone UTF-16 surrogate (not valid Unicode text)", param=param)
    return value


MAX_LIMIT = 2**31 - 1        # the limit columns are 32-bit integers (PostgreSQL INTEGER)


def limit(value, param: str) -> int | None:
    """A limit: None (no limit), 0 (nothing allowed) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_LIMIT:
        raise InvalidParam(f"{param} must be an integer from 0 to {MAX_LIMIT} (0: nothing allowed) "
                           "or null (no limit)", param=param)
    return value


def quota(value, param: str) -> int | None:
    """A daily quota: None (no limit), 0 (nothing allowed) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**53:
        raise InvalidParam(f"{param} must be a non-negative integer (0: nothing allowed) or null "
                           "(no limit)", param=param)
    return value


def limits(values: dict, allowed: tuple[str, ...]) -> dict:
    out = {}
    for k, v in values.items():
        if k not in allowed:
            raise InvalidParam(f"unknown field {k}", param=k)
        out[k] = quota(v, k) if k.startswith("quota_") else limit(v, k)
    return out
