"""Small helpers every dialect uses: reading a JSON body, pydantic errors -> InvalidParam,
bearer tokens."""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, ValidationError

from wharf.errors import InvalidParam, InvalidRequest
from wharf.platform import validate


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, read no further than `max_bytes` (a declared or streamed larger body is
    refused before it is buffered: no memory blow-up from a huge upload)."""
    too_large = InvalidRequest(f"request body is larger than {max_bytes} bytes", reason="too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    request._body = raw          # later request.body() calls see it (Starlette caches it there)
    return raw


async def json_body(request: Request, max_bytes: int) -> dict:
    raw = await read_body(request, max_bytes)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply", reason="json") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", reason="json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", reason="json")
    validate.json_text(body, raw)      # no lone surrogate ("\\ud800") in any string of it
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def parse_model(model: type[BaseModel], body: dict) -> BaseModel:
    """Validate with pydantic; the first error becomes an InvalidParam naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidParam(f"{param}: {msg}" if param else msg, param=param) from None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else header.strip()
