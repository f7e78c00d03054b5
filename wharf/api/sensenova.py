"""SenseNova dialect (seed 003): `POST /v1/llm/completions`, `POST /v1/llm/chat-completions`,
`GET /v1/llm/models`, `GET /v1/llm/models/{id}`.

Clients: the `sensenova` SDK with `SENSENOVA_API_BASE` (or `sensenova.api_base`) set to
`{wharf}/v1`. Auth is `Authorization: Bearer <JWT>`, HS256 signed with the secret access
key, `iss` = access key id, `exp` and `nbf` required.

Request fields (seed 003): prompt (required, non-empty), model (required), n [1,4] = 1,
max_new_tokens [1,2048] = 1024, repetition_penalty (0,2] = 1.05, stop (a string; a
list of strings is also accepted), stream = false, temperature (0,2] = 0.8,
top_p (0,1) = 0.7. Chat takes `messages` [{role, content}] instead of prompt; the
SDK's extra keys (know_ids, user, knowledge_config, plugins...) are accepted and
ignored. Types are strict (a string where a number belongs is a 400).

Window: when max_new_tokens is given, prompt tokens + max_new_tokens must fit in the
model's context or the request is a 400. When it is not given, the default 1024 is
clamped to what the window leaves, and a choice cut by that clamp finishes "context".

Success: {"data": {"id", "choices", "usage"}, "status": {"code": 0, "message": "ok"}};
completions choices {text, index, finish_reason}; chat choices {message, role, index,
finish_reason}. Streams are `data:{json}` events (no space) whose choices carry
`delta` and finish_reason "" until the choice ends; usage is zero except on the last
event, which carries the totals; the terminator is exactly `data:[DONE]`.

finish_reason: "stop" (end of text or a stop string), "length" (max_new_tokens),
"sensitive" (the output check cut the choice, or the prompt was blocked), "context"
(the window cut a request that gave no max_new_tokens).

A blocked prompt is NOT an error here: it is a 200 (or a one-event stream) whose
choices are empty text with finish_reason "sensitive", as the seed's enum implies and
the SDK hands to the user unchanged; usage has the prompt tokens and 0 completion.

Errors: non-2xx, always JSON `{"error": {"code", "message", "details": []}}`, with the
gRPC status codes a grpc-gateway API uses:
  400 code 3  invalid argument (field named in the message, bad JSON, window)
  401 code 16 unauthenticated (missing/malformed/bad-signature/unknown-key/expired JWT)
  403 code 7  permission denied
  404 code 5  unknown model
  429 code 8  rate limit or daily quota
  503 code 14 overloaded, 504 code 4 timeout, 500 code 13 internal
An error after a stream has started is one `data:{"error": {...}}` event (the SDK
raises on it), then `data:[DONE]`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

from wharf import errors as E
from wharf.api.common import bearer_token, json_body, parse_model
from wharf.api.dialect import Dialect, retry_after
from wharf.api.disconnect import ClientGone, gone_response, unless_client_leaves
from wharf.api.errors import unexpected
from wharf.api.pipeline import Caller, Run
from wharf.api.request_ids import name_request
from wharf.api.sse import event, sse_response
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams
from wharf.errors import WharfError

router = APIRouter(tags=["sensenova"])

DEFAULT_MAX_NEW_TOKENS = 1024
MAX_STOPS = 16            # stop strings per request (each is scanned on every token)
MAX_STOP_CHARS = 256
OK = {"code": 0, "message": "ok"}

Int = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True)]


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(strict=True, min_length=1)]
    n: Annotated[Int, Field(ge=1, le=4)] = 1
    max_new_tokens: Annotated[Int, Field(ge=1, le=2048)] | None = None
    repetition_penalty: Annotated[Number, Field(gt=0, le=2)] = 1.05
    stop: Annotated[str, Field(strict=True)] | list[Annotated[str, Field(strict=True)]] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    temperature: Annotated[Number, Field(gt=0, le=2)] = 0.8
    top_p: Annotated[Number, Field(gt=0, lt=1)] = 0.7

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters")
        return [s for s in stops if s]

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              repetition_penalty=self.repetition_penalty, stop=self.stop or [], n=self.n)


class CompletionBody(_Common):
    prompt: Annotated[str, Field(strict=True, min_length=1)]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(strict=True)]


class ChatBody(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]


FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.CONTENT: "sensitive",
          FinishReason.CANCELLED: "stop", FinishReason.ERROR: "stop"}

# The error table: taxonomy -> (HTTP status, gRPC code).
_ERRORS: dict[type, tuple[int, int]] = {
    E.InvalidRequest: (400, 3),
    E.InvalidParam: (400, 3),
    E.Conflict: (400, 3),
    E.AuthError: (401, 16),
    E.PermissionDenied: (403, 7),
    E.NotFound: (404, 5),
    E.RateLimited: (429, 8),
    E.QuotaExceeded: (429, 8),
    E.Overloaded: (503, 14),
    E.Timeout: (504, 4),
    E.Internal: (500, 13),
}


def _error_body(exc: WharfError) -> tuple[int, dict]:
    status, code = E.by_kind(_ERRORS, exc, _ERRORS[E.Internal])
    return status, {"error": {"code": code, "message": exc.message, "details": []}}


def sensenova_error(exc: WharfError) -> JSONResponse:
    status, body = _error_body(exc)
    return JSONResponse(body, status_code=status, headers=retry_after(exc))


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _auth(request: Request):
    return request.app.state.platform.authenticator.sensenova_jwt(bearer_token(request))


async def _serve(request: Request, body_model: type[_Common], chat: bool):
    state = request.app.state
    try:
        principal = _auth(request)
    except WharfError as exc:
        return sensenova_error(exc)
    caller = Caller(principal=principal, dialect="sensenova", connection=request,
                    request_id=name_request(request, uuid.uuid4().hex))
    try:
        raw = await json_body(request, state.settings.max_body_bytes)
        body = parse_model(body_model, raw)
        caller.user = raw.get("user") if isinstance(raw.get("user"), str) else None
    except Exception as exc:
        if not isinstance(exc, WharfError):
            exc = unexpected(exc)
        state.pipeline.reject(caller, None, exc)
        return sensenova_error(exc)

    # max_new_tokens absent: 1024, or what the window leaves (then a cut choice is "context").
    sampling = body.sampling(body.max_new_tokens)
    prompt = dict(messages=[{"role": m.role, "content": m.content} for m in body.messages]) if chat \
        else dict(prompt=body.prompt)
    gen = GenerationRequest(model=body.model, sampling=sampling, default_max_tokens=DEFAULT_MAX_NEW_TOKENS,
                            **prompt)
    rid = caller.request_id
    try:
        run = await state.pipeline.start(caller, gen)      # records its own refusals
    except ClientGone:
        return gone_response()
    except E.ContentBlocked as exc:
        return _blocked(rid, body, exc.prompt_tokens or 0, chat)
    except WharfError as exc:
        if exc.param == "max_tokens":      # the engine's window rule, in this API's field name
            exc.param, exc.message = "max_new_tokens", f"max_new_tokens: {exc.message}"
        return sensenova_error(exc)

    def reason(f: FinishReason | None) -> str:
        if f is FinishReason.LENGTH and run.prepared.clamped:
            return "context"
        return FINISH[f or FinishReason.STOP]

    if body.stream:
        return sse_response(_stream(run, rid, body.n, chat, reason), run=run)

    try:
        outputs = await unless_client_leaves(request, run.whole())
    except ClientGone:
        return gone_response()
    except WharfError as exc:
        return sensenova_error(exc)
    choices = []
    for i, out in enumerate(outputs):
        choices.append({"message": out.text, "role": "assistant", "index": i, "finish_reason": reason(out.finish)}
                       if chat else {"text": out.text, "index": i, "finish_reason": reason(out.finish)})
    return JSONResponse({"data": {"id": rid, "choices": choices,
                                  "usage": _usage(run.prompt_tokens, run.completion_tokens)},
                         "status": OK})


async def _stream(run: Run, rid: str, n: int, chat: bool, reason):
    done = 0
    zero = _usage(0, 0)
    try:
        async for c in run.chunks():
            last = False
            if c.finish_reason is not None:
                done += 1
                last = done == n
            choice = {"index": c.index, "delta": c.text,
                      "finish_reason": reason(c.finish_reason) if c.finish_reason is not None else ""}
            if chat:
                choice["role"] = "assistant"
            usage = _usage(run.prompt_tokens, run.completion_tokens) if last else zero
            yield event({"data": {"id": rid, "choices": [choice], "usage": usage}, "status": OK}, space=False)
    except WharfError as exc:
        yield event(_error_body(exc)[1], space=False)
    yield event("[DONE]", space=False)


def _blocked(rid: str, body: _Common, prompt_tokens: int, chat: bool):
    def choice(i: int, stream: bool) -> dict:
        c = {"index": i, "finish_reason": "sensitive"}
        c["delta" if stream else ("message" if chat else "text")] = ""
        if chat:
            c["role"] = "assistant"
        return c

    usage = _usage(prompt_tokens, 0)
    if body.stream:
        async def one():
            yield event({"data": {"id": rid, "choices": [choice(i, True) for i in range(body.n)], "usage": usage},
                         "status": OK}, space=False)
            yield event("[DONE]", space=False)
        return sse_response(one())
    return JSONResponse({"data": {"id": rid, "choices": [choice(i, False) for i in range(body.n)],
                                  "usage": usage}, "status": OK})


@router.post("/v1/llm/completions")
async def completions(request: Request):
    return await _serve(request, CompletionBody, chat=False)


@router.post("/v1/llm/chat-completions")
async def chat_completions(request: Request):
    return await _serve(request, ChatBody, chat=True)


def _card(info, name: str | None = None) -> dict:
    return {"id": name or info.name, "object": "model", "created": 0, "owned_by": "wharf",
            "context_size": info.context_length, "root": info.identity}


@router.get("/v1/llm/models")
async def list_models(request: Request):
    try:
        _auth(request)
    except WharfError as exc:
        return sensenova_error(exc)
    data = []
    for info in request.app.state.registry.list():
        data.append(_card(info))
        data.extend(_card(info, alias) for alias in info.aliases)
    return {"object": "list", "data": data}


@router.get("/v1/llm/models/{model_id:path}")
async def get_model(request: Request, model_id: str):
    try:
        _auth(request)
        engine = request.app.state.pipeline.engine_for(model_id)
    except WharfError as exc:
        return sensenova_error(exc)
    return _card(engine.info, model_id)


DIALECT = Dialect("sensenova", ("/v1/llm/",), sensenova_error, router)
