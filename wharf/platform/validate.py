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


def text(value, param: str, max_len: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParam(f"{param} must be a string", param=param)
    if len(value) > max_len:
        raise InvalidParam(f"{param} is longer than {max_len} characters", param=param)
    return value


def limit(value, param: str) -> int | None:
    """A non-negative integer limit or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**53:
        raise InvalidParam(f"{param} must be a non-negative integer or null", param=param)
    return value


def limits(values: dict, allowed: tuple[str, ...]) -> dict:
    out = {}
    for k, v in values.items():
        if k not in allowed:
            raise InvalidParam(f"unknown field {k}", param=k)
        out[k] = limit(v, k)
    return out
