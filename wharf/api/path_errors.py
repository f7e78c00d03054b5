"""Answers made before or outside any route (body limit, throttle, the store or Redis
unavailable), in the shape of the API that owns the path: each dialect's own mapping
(api/dialect.py), OpenAI's for every path no other dialect owns. It sits above the
dialects, which know nothing of each other or of paths."""

from __future__ import annotations

from starlette.responses import Response

from wharf import errors as E
from wharf.api import admin, openai, qianfan, sensenova, welm

DIALECTS = (qianfan.DIALECT, qianfan.OAUTH, welm.DIALECT, sensenova.DIALECT, admin.DIALECT, openai.DIALECT)


def error_for_path(path: str, exc: E.WharfError) -> Response:
    """`exc` answered as the API that owns `path` answers it (for middleware and app-level
    handlers that run outside any route)."""
    owner = next((d for d in DIALECTS if d.owns(path)), openai.DIALECT)
    return owner.error(exc)
