"""Baidu Qianfan dialect: wenxinworkshop custom-service completions and chat (seeds 001, 002, 004).

Mount points:
  GET|POST /oauth/2.0/token                                       OAuth client_credentials
  POST /rpc/2.0/ai_custom/v1/wenxinworkshop/completions/{endpoint} text completion
  POST /rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}        chat
  POST /wenxinworkshop/service/list                               console list (IAM mode of the SDK)

Authentication: `?access_token=` (from /oauth/2.0/token) or a BCE v1 `Authorization`
header (IAM AK/SK). Every error is HTTP 200 with {"error_code", "error_msg", "id"}: a
non-2xx makes the qianfan SDK raise without retrying or refreshing its token. The one
exception is the OAuth endpoint, which answers in OAuth's own shape (the SDK reads its
JSON whatever the status; 401 is what Baidu sends for a bad client).

Body parameters (seeds): prompt | messages (+ optional system), temperature (0, 1],
top_k positive integer, top_p [0, 1], penalty_score [1, 2], stop (<= 4 strings of
<= 20 characters), user_id, stream. Extensions: max_output_tokens (positive integer),
seed. Unknown keys (extra_parameters, ...) are ignored. A completions body may carry its
prompt as one user message instead (the Node.js SDK sends that). Defaults: temperature 0.8,
top_p 0.8, penalty_score 1.0 (ERNIE's published defaults; the seeds give none), at most
1024 output tokens or what the model window leaves.

Error codes:
  336001 invalid argument   a field is missing or of the wrong type, body too large
  336002 invalid JSON
  336003 invalid parameter  a value is out of range, messages break the rules, the prompt
                            does not fit the window, or the input was blocked by the
                            safety lexicon (then also need_clear_history: true, ban_round)
  110 / 111                 access token invalid (or revoked/disabled) / expired
  13 / 14                   no credential at all / IAM signature failure (bad signature,
                            unknown AK, expired timestamp, revoked AK)
  336004                    the endpoint belongs to another account
  336005                    unknown endpoint, or a chat service called on the completions path
                            (or the reverse)
  17                        daily quota spent
  18 / 336501 / 336502      QPS or concurrency / RPM / TPM limit (the SDK retries these)
  336100                    engine queue full (the SDK retries it)
  336000                    internal error, timeout
"""

from __future__ import annotations

import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from wharf import errors as E
from wharf.api.common import json_body
from wharf.api.dialect import Dialect, retry_after
from wharf.api.disconnect import ClientGone, gone_response, unless_client_leaves
from wharf.api.errors import unexpected
from wharf.api.pipeline import Caller, Run
from wharf.api.request_ids import name_request
from wharf.api.sse import dumps, event, sse_response
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams
from wharf.platform.auth import Principal

router = APIRouter(tags=["qianfan"])

PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.8
DEFAULT_MAX_OUTPUT_TOKENS = 1024
MAX_STOP_ITEMS = 4
MAX_STOP_CHARS = 20

_ID_ALPHABET = string.ascii_lowercase + string.digits


def _new_id() -> str:
    return "as-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


# -- errors ----------------------------------------------------------------------------

class _Argument(E.InvalidParam):
    """A field is missing or has the wrong type (336001, not 336003)."""


def error_code(exc: E.WharfError, *, iam: bool = False) -> int:
    if isinstance(exc, E.AuthError):
        if iam:
            return 13 if exc.reason == "missing" else 14
        return 111 if exc.reason == "expired" else 110
    if isinstance(exc, E.InvalidRequest):
        return 336002 if exc.reason == "json" else 336001
    if isinstance(exc, _Argument):
        return 336001
    if isinstance(exc, (E.InvalidParam, E.ContentBlocked, E.Conflict)):
        return 336003
    if isinstance(exc, E.PermissionDenied):
        return 336004
    if isinstance(exc, E.NotFound):
        return 336005
    if isinstance(exc, E.QuotaExceeded):
        return 17
    if isinstance(exc, E.RateLimited):
        return {"rpm": 336501, "tpm": 336502}.get(exc.reason or "", 18)
    if isinstance(exc, E.Overloaded):
        return 336100
    return 336000


def _error_body(exc: E.WharfError, *, iam: bool = False, rid: str | None = None, **extra) -> dict:
    code = error_code(exc, iam=iam)
    msg = exc.message
    if code == 110:
        msg = "Access token invalid or no longer valid"
    elif code == 111:
        msg = "Access token expired"
    elif isinstance(exc, E.Internal):
        msg = "Internal error"
    return {"error_code": code, "error_msg": msg, "id": rid or _new_id(), **extra}


def qianfan_error(exc: E.WharfError, *, iam: bool = False, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(_error_body(exc, iam=iam, **extra), status_code=200, headers=headers)


# -- authentication --------------------------------------------------------------------

def _is_iam(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    return "access_token" not in request.query_params and auth.strip().lower().startswith("bce-auth-v1/")


def _authenticate(request: Request) -> Principal:
    auth = request.app.state.platform.authenticator
    token = request.query_params.get("access_token")
    if token is not None:
        return auth.qianfan_access_token(token)
    header = request.headers.get("authorization")
    if header:
        return auth.bce_signature(request.method, request.scope["path"],
                                  request.query_params.multi_items(), dict(request.headers), header)
    raise E.AuthError("missing access_token or Authorization", reason="missing")


def _limit_headers(state, caller: Caller) -> dict:
    """The limits that bind this caller (account, platform default, credential, service)."""
    rpm, tpm = state.pipeline.effective_limits(caller)
    headers = {}
    if rpm is not None:                      # 0: nothing allowed, said as such
        headers["X-Ratelimit-Limit-Requests"] = f"{rpm:g}"
    if tpm is not None:
        headers["X-Ratelimit-Limit-Tokens"] = str(int(tpm))
    return headers


# -- OAuth -----------------------------------------------------------------------------

# OAuth's own error shape ({"error", "error_description"}): what the qianfan SDKs read
# from the token endpoint, for refusals made before the route (throttle, body limit).
_OAUTH_ERRORS: dict[type, tuple[int, str]] = {E.RateLimited: (429, "slow_down"),
                                              E.Overloaded: (503, "temporarily_unavailable"),
                                              E.InvalidRequest: (400, "invalid_request")}


def oauth_error(exc: E.WharfError) -> JSONResponse:
    status, code = E.by_kind(_OAUTH_ERRORS, exc, (500, "server_error"))
    if isinstance(exc, E.InvalidRequest) and exc.reason == "too_large":
        status = 413
    return JSONResponse({"error": code, "error_description": exc.message}, status_code=status,
                        headers=retry_after(exc))


@router.api_route("/oauth/2.0/token", methods=["GET", "POST"])
async def oauth_token(request: Request):
    params = dict(request.query_params)
    if "client_id" not in params and "form" in request.headers.get("content-type", ""):
        try:
            form = await request.form()
            params.update({k: str(v) for k, v in form.items()})
        except Exception:
            pass
    if params.get("grant_type") != "client_credentials":
        return JSONResponse({"error": "unsupported_grant_type",
                             "error_description": "The authorization grant type is not supported"},
                            status_code=400)
    try:
        token, ttl = request.app.state.platform.authenticator.issue_qianfan_token(
            params.get("client_id", ""), params.get("client_secret", ""))
    except E.AuthError as exc:
        desc = "unknown client id" if exc.reason == "unknown_client" else "Client authentication failed"
        return JSONResponse({"error": "invalid_client", "error_description": desc}, status_code=401)
    return JSONResponse({
        "refresh_token": "25." + secrets.token_hex(32) + f".{10 * ttl}.wharf",
        "expires_in": ttl,
        "session_key": secrets.token_hex(32),
        "access_token": token,
        "scope": "public wenxinworkshop_mgr ai_custom_yiyan_com ai_custom_yiyan_com_eb_instant",
        "session_secret": secrets.token_hex(16),
    })


# -- console: service list -------------------------------------------------------------

@router.post("/wenxinworkshop/service/list")
async def service_list(request: Request):
    state = request.app.state
    iam = "access_token" not in request.query_params
    try:
        principal = _authenticate(request)
    except E.WharfError as exc:
        return qianfan_error(exc, iam=iam)
    filters = None
    try:
        body = await json_body(request, state.settings.max_body_bytes) if await request.body() else {}
        f = body.get("apiTypefilter")
        if isinstance(f, list) and f:
            filters = {str(x) for x in f}
    except E.WharfError:
        pass
    base = str(request.base_url).rstrip("/")
    entries = []
    for svc in state.platform.services.list(principal.account_id):
        if filters is not None and svc.kind not in filters:
            continue
        # Every field a string: the Go SDK's struct has serviceId as one.
        entries.append({"serviceId": str(svc.id), "name": svc.endpoint,
                        "url": f"{base}{PREFIX}/{svc.kind}/{svc.endpoint}",
                        "apiType": svc.kind, "chargeStatus": "RUNNING", "model": svc.model,
                        "description": svc.description,
                        "versionList": [{"trainType": svc.model, "serviceStatus": "Done"}]})
    return JSONResponse({"log_id": uuid.uuid4().hex, "result": {"common": entries, "custom": entries}})


# -- body validation -------------------------------------------------------------------

def _number(body: dict, name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Argument(f"{name} must be a number", param=name)
    return float(v)


def _sampling(body: dict) -> SamplingParams:
    temperature = _number(body, "temperature")
    if temperature is not None and not 0 < temperature <= 1:
        raise E.InvalidParam("temperature must be in (0, 1.0]", param="temperature")
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise E.InvalidParam("top_p must be in [0, 1.0]", param="top_p")
    top_k = _number(body, "top_k")
    if top_k is not None and (top_k != int(top_k) or top_k < 1):
        raise E.InvalidParam("top_k must be a positive integer", param="top_k")
    penalty = _number(body, "penalty_score")
    if penalty is not None and not 1 <= penalty <= 2:
        raise E.InvalidParam("penalty_score must be in [1.0, 2.0]", param="penalty_score")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _Argument("stop must be a list of strings", param="stop")
    if len(stop) > MAX_STOP_ITEMS:
        raise E.InvalidParam(f"stop has at most {MAX_STOP_ITEMS} items", param="stop")
    for s in stop:
        if not s or len(s) > MAX_STOP_CHARS:
            raise E.InvalidParam(f"each stop item must be 1 to {MAX_STOP_CHARS} characters", param="stop")
    max_out = body.get("max_output_tokens")
    if max_out is not None and (isinstance(max_out, bool) or not isinstance(max_out, int)):
        raise _Argument("max_output_tokens must be an integer", param="max_output_tokens")
    if max_out is not None and max_out < 1:
        raise E.InvalidParam("max_output_tokens must be a positive integer", param="max_output_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _Argument("seed must be an integer", param="seed")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _Argument("stream must be a boolean", param="stream")
    user_id = body.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise _Argument("user_id must be a string", param="user_id")
    params = SamplingParams(
        max_tokens=max_out,
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=DEFAULT_TOP_P if top_p is None else max(top_p, 1e-6),
        top_k=0 if top_k is None else int(top_k),
        repetition_penalty=1.0 if penalty is None else penalty,
        stop=list(stop), seed=seed, n=1)
    if top_p == 0:              # only the most probable token survives
        params.top_k = 1
    return params


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise _Argument("messages is required", param="messages")
    if not isinstance(messages, list):
        raise _Argument("messages must be a list", param="messages")
    if not messages:
        raise E.InvalidParam("messages must not be empty", param="messages")
    if len(messages) % 2 == 0:
        raise E.InvalidParam("messages must have an odd number of members", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _Argument(f"messages[{i}] must have role and content", param=f"messages[{i}]")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise _Argument(f"messages[{i}] role and content must be strings", param=f"messages[{i}]")
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise E.InvalidParam(f"messages[{i}].role must be {want!r}: roles alternate user, assistant, "
                                 "... and the last is user", param=f"messages[{i}].role")
        if not content.strip():
            raise E.InvalidParam(f"messages[{i}].content must not be empty", param=f"messages[{i}].content")
        out.append({"role": role, "content": content})
    system = body.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _Argument("system must be a string", param="system")
        if system.strip():
            out.insert(0, {"role": "system", "content": system})
    return out


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    messages = body.get("messages")
    if prompt is None and isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict) \
            and messages[0].get("role") == "user":
        # The Node.js SDK (@baiducloud/qianfan 0.2.4) rewrites a Completions call for its
        # default model into {"messages": [{"role": "user", "content": prompt}]}, prompt dropped.
        prompt = messages[0].get("content")
    if prompt is None:
        raise _Argument("prompt is required", param="prompt")
    if not isinstance(prompt, str):
        raise _Argument("prompt must be a string", param="prompt")
    if not prompt:
        raise E.InvalidParam("prompt must not be empty", param="prompt")
    return prompt


def _ban_round(state, messages: list[dict]) -> int:
    """Which user round the lexicon matched: -1 for the current question."""
    users = [m for m in messages if m["role"] == "user"]
    safety = state.safety
    for n, m in enumerate(users[:-1], start=1):
        if safety.find(m["content"]):
            return n
    return -1


# -- completions and chat --------------------------------------------------------------

FINISH = {FinishReason.STOP: "normal", FinishReason.LENGTH: "length",
          FinishReason.CONTENT: "content_filter", FinishReason.CANCELLED: "normal",
          FinishReason.ERROR: "normal"}


def _usage(run: Run) -> dict:
    return {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens}


async def _serve(request: Request, endpoint: str, kind: str):
    state = request.app.state
    iam = _is_iam(request)
    try:
        principal = _authenticate(request)
    except E.WharfError as exc:
        return qianfan_error(exc, iam=iam)
    caller = Caller(principal=principal, dialect="qianfan", connection=request,
                    request_id=name_request(request, _new_id()))
    rid = caller.request_id
    headers = _limit_headers(state, caller)
    try:
        svc = state.platform.services.resolve_service(principal, endpoint, kind)
    except E.WharfError as exc:
        state.pipeline.reject(caller, None, exc)
        return qianfan_error(exc, headers=headers, rid=rid)
    caller.service_id, caller.service_limits = svc.id, (svc.rpm, svc.tpm)
    headers = _limit_headers(state, caller)

    messages = None
    try:
        body = await json_body(request, state.settings.max_body_bytes)
        sampling = _sampling(body)
        caller.user = body.get("user_id")
        if kind == "chat":
            messages = _messages(body)
            gen = GenerationRequest(model=svc.model, messages=messages, sampling=sampling)
        else:
            gen = GenerationRequest(model=svc.model, prompt=_prompt(body), sampling=sampling)
    except Exception as exc:
        if not isinstance(exc, E.WharfError):
            exc = unexpected(exc)
        state.pipeline.reject(caller, None, exc)
        return qianfan_error(exc, headers=headers, rid=rid)
    if gen.sampling.max_tokens is None:      # 1024, or what the window leaves if less
        gen.default_max_tokens = DEFAULT_MAX_OUTPUT_TOKENS

    try:
        run = await state.pipeline.start(caller, gen)
    except ClientGone:
        return gone_response()
    except E.ContentBlocked as exc:
        return qianfan_error(exc, headers=headers, rid=rid, need_clear_history=True,
                      ban_round=_ban_round(state, messages) if messages else -1)
    except E.WharfError as exc:
        return qianfan_error(exc, headers=headers, rid=rid)

    obj = "chat.completion" if kind == "chat" else "completion"
    # The pipeline has waited for the engine's first chunk: a refusal (queue full ->
    # 336100, which the SDK retries) was a plain JSON error above, never a stream.
    if body.get("stream"):
        return sse_response(_stream(run, rid, obj, kind), headers, run=run)

    try:
        (whole,) = await unless_client_leaves(request, run.whole())      # Qianfan has no n
    except ClientGone:
        return gone_response()
    except E.WharfError as exc:
        return qianfan_error(exc, headers=headers, rid=rid)
    finish = whole.finish
    out = {"id": rid, "object": obj, "created": int(time.time()), "result": whole.text,
           "is_truncated": finish is FinishReason.LENGTH, "need_clear_history": False,
           "finish_reason": FINISH.get(finish, "normal")}
    if kind == "completions" or finish is FinishReason.CONTENT:
        out["is_safe"] = 0 if finish is FinishReason.CONTENT else 1
    out["usage"] = _usage(run)
    return JSONResponse(out, headers=headers)


def _go_safe(payload: str) -> str:
    """The Go SDK skips every SSE line containing the bytes `event`, so a chunk saying
    "prevent" would vanish: write its second e as \\u0065, the same JSON string for every
    client. (That e is never part of an escape: it follows "ev", and v is no hex digit.)"""
    return payload.replace("event", "ev\\u0065nt")


async def _stream(run: Run, rid: str, obj: str, kind: str) -> AsyncIterator[bytes]:
    sentence = 0

    def frame(text: str, finish: FinishReason | None, end: bool) -> bytes:
        nonlocal sentence
        out = {"id": rid, "object": obj, "created": int(time.time()), "sentence_id": sentence,
               "is_end": end, "is_truncated": end and finish is FinishReason.LENGTH, "result": text,
               "need_clear_history": False,
               "finish_reason": FINISH.get(finish, "normal") if end else "normal"}
        if kind == "completions" or finish is FinishReason.CONTENT:
            out["is_safe"] = 0 if finish is FinishReason.CONTENT else 1
        out["usage"] = _usage(run)
        sentence += 1
        return event(_go_safe(dumps(out)))

    ended = False
    try:
        async for c in run.chunks():    # read to the end so the run settles as finished, not cancelled
            if ended:
                continue
            if c.finish_reason is not None:
                yield frame(c.text, c.finish_reason, True)
                ended = True
            elif c.text:
                yield frame(c.text, None, False)
        if not ended:
            yield frame("", FinishReason.STOP, True)
    except E.WharfError as exc:
        # Mid-stream failure: a bare JSON line (no "data: "), which the SDK raises as an APIError.
        yield (dumps(_error_body(exc, rid=rid)) + "\n\n").encode()


@router.post(PREFIX + "/completions/{endpoint}")
async def completions(endpoint: str, request: Request) -> Response:
    return await _serve(request, endpoint, "completions")


@router.post(PREFIX + "/chat/{endpoint}")
async def chat(endpoint: str, request: Request) -> Response:
    return await _serve(request, endpoint, "chat")


DIALECT = Dialect("qianfan", ("/rpc/2.0/ai_custom", "/wenxinworkshop"),
                  lambda exc: qianfan_error(exc, headers=retry_after(exc) or None), router)
OAUTH = Dialect("qianfan-oauth", ("/oauth/",), oauth_error)     # its route is in `router`
