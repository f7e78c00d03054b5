"""WeLM dialect (seed 000): `POST /welm/v1/completions`.

WeLM's own path is `/v1/completions`, which clashes with OpenAI's, so it lives under
`/welm`. Point a WeLM client's base URL at `{wharf}/welm`.

Request fields, defaults and ranges are the seed's: model (required), prompt (""),
max_tokens (16, 1..1024, prompt tokens + max_tokens <= 2048), temperature (0.85,
0 = argmax, at most 2), top_p (0.95, [0, 1]), top_k (50, >= 0, 0 = off), n (1, 1..12),
echo (false), stop (a string; every character of it is a stop on its own; the stop
character is not part of the text). Unknown keys are ignored. Types are strict: a
string where a number belongs is an invalid parameter.

Response (200): {"id": uuid, "object": "text_generation", "created", "model",
"choices": [{"text", "index", "logprobs": 0, "finish_reason"}]}; with echo the
prompt comes first in each text.

finish_reason:
  "finished"                       end of text or a stop character (the seed's value)
  "length"                         max_tokens reached (Wharf's distinct value)
  "error: internal error"          the output safety check cut this choice (200)
  "error: content policy violation" the prompt hit the lexicon (400)

Errors. JSON bodies have the response shape with one choice whose finish_reason is
"error: ..." and say which parameter is at fault, plus an "error" object
{"message", "param"}; the two 429s are plain text exactly as the seed shows:
  400 invalid parameter (including an unknown model, bad JSON, the 2048 window)
  400 prompt blocked            finish_reason "error: content policy violation"
  401 missing or unknown token  finish_reason "error: invalid token"
  403 permission                finish_reason "error: permission denied"
  429 text/plain `quota limit exceed` (daily quota) / `rate limit exceeded`
  503 overloaded                finish_reason "error: service unavailable"
  504 timeout                   finish_reason "error: timeout"
  500 anything else             finish_reason "error: internal error"
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, PlainTextResponse, Response

from wharf import errors as E
from wharf.api.common import bearer_token, json_body, parse_model
from wharf.api.dialect import Dialect, retry_after
from wharf.api.disconnect import ClientGone, gone_response, unless_client_leaves
from wharf.api.errors import unexpected
from wharf.api.pipeline import Caller
from wharf.api.request_ids import name_request
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams
from wharf.errors import WharfError

router = APIRouter(tags=["welm"])

MAX_TOKENS = 1024
WINDOW = 2048
MAX_N = 12
MAX_STOP_CHARS = 256     # each character is a stop; a bound keeps the per-token stop scan cheap

StrictInt = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True)]   # strict float still accepts JSON integers


class WeLMBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(strict=True, min_length=1)]
    prompt: Annotated[str, Field(strict=True)] = ""
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] = 16
    temperature: Annotated[Number, Field(ge=0, le=2)] = 0.85
    top_p: Annotated[Number, Field(ge=0, le=1)] = 0.95
    top_k: Annotated[StrictInt, Field(ge=0)] = 50
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    echo: Annotated[bool, Field(strict=True)] = False
    stop: Annotated[str, Field(strict=True, max_length=MAX_STOP_CHARS)] | None = None

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, n=self.n,
                              stop=list(dict.fromkeys(self.stop or "")))


FINISH = {FinishReason.STOP: "finished", FinishReason.LENGTH: "length",
          FinishReason.CONTENT: "error: internal error", FinishReason.CANCELLED: "error: internal error",
          FinishReason.ERROR: "error: internal error"}

# The error table: taxonomy -> (status, finish_reason). None: a plain-text body.
_ERRORS: dict[type, tuple[int, str | None]] = {
    E.InvalidRequest: (400, "error: invalid parameter"),
    E.InvalidParam: (400, "error: invalid parameter"),
    E.NotFound: (400, "error: invalid parameter"),
    E.Conflict: (400, "error: invalid parameter"),
    E.ContentBlocked: (400, "error: content policy violation"),
    E.AuthError: (401, "error: invalid token"),
    E.PermissionDenied: (403, "error: permission denied"),
    E.RateLimited: (429, None),
    E.QuotaExceeded: (429, None),
    E.Overloaded: (503, "error: service unavailable"),
    E.Timeout: (504, "error: timeout"),
    E.Internal: (500, "error: internal error"),
}


def welm_error(exc: WharfError, model: str = "", rid: str | None = None) -> Response:
    status, finish = E.by_kind(_ERRORS, exc, _ERRORS[E.Internal])
    if isinstance(exc, E.QuotaExceeded):
        return PlainTextResponse("quota limit exceed", status_code=429)
    if isinstance(exc, E.RateLimited):
        return PlainTextResponse("rate limit exceeded", status_code=429, headers=retry_after(exc))
    param = exc.param or ("model" if isinstance(exc, E.NotFound) else None)
    if finish == "error: invalid parameter":
        finish = f"error: invalid parameter {param}: {exc.message}" if param else f"{finish}: {exc.message}"
    body = {"id": rid or str(uuid.uuid4()), "object": "text_generation", "created": int(time.time()), "model": model,
            "choices": [{"text": "", "index": 0, "logprobs": 0, "finish_reason": finish}],
            "error": {"message": exc.message, "param": param}}
    return JSONResponse(body, status_code=status)


@router.post("/welm/v1/completions")
async def completions(request: Request):
    state = request.app.state
    try:
        principal = state.platform.authenticator.bearer(bearer_token(request))
    except WharfError as exc:
        return welm_error(exc)
    caller = Caller(principal=principal, dialect="welm", connection=request,
                    request_id=name_request(request, str(uuid.uuid4())))
    model = ""
    try:
        raw = await json_body(request, state.settings.max_body_bytes)
        model = raw.get("model") if isinstance(raw.get("model"), str) else ""
        body = parse_model(WeLMBody, raw)
    except Exception as exc:
        if not isinstance(exc, WharfError):
            exc = unexpected(exc)
        state.pipeline.reject(caller, None, exc, model=model)
        return welm_error(exc, model, caller.request_id)

    # prompt tokens + max_tokens <= 2048, checked with the model's own window (pipeline).
    gen = GenerationRequest(model=body.model, prompt=body.prompt, sampling=body.sampling(), window=WINDOW)
    try:
        run = await state.pipeline.start(caller, gen)      # records its own refusals
    except ClientGone:
        return gone_response()
    except WharfError as exc:
        return welm_error(exc, body.model, caller.request_id)

    try:
        outputs = await unless_client_leaves(request, run.whole())
    except ClientGone:
        return gone_response()
    except WharfError as exc:
        return welm_error(exc, body.model, caller.request_id)
    echo = body.prompt if body.echo else ""
    choices = []
    for i, out in enumerate(outputs):
        # A choice cut by the output check carries no text, as the seed's 200 + error implies.
        text = "" if out.finish is FinishReason.CONTENT else echo + out.text
        choices.append({"text": text, "index": i, "logprobs": 0, "finish_reason": FINISH[out.finish]})
    return JSONResponse({"id": caller.request_id, "object": "text_generation", "created": int(time.time()),
                         "model": body.model, "choices": choices})


DIALECT = Dialect("welm", ("/welm/",), welm_error, router)
