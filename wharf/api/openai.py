"""OpenAI dialect: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

from wharf.api.common import bearer_token, json_body, parse_model
from wharf.api.dialect import Dialect
from wharf.api.disconnect import ClientGone, gone_response, unless_client_leaves
from wharf.api.errors import openai_error, unexpected
from wharf.api.openai_tools import ToolStream, ToolUse, message_calls, response_format
from wharf.api.pipeline import Caller, Run
from wharf.api.request_ids import name_request
from wharf.api.sse import event, sse_response
from wharf.engine.types import Chunk, FinishReason, GenerationRequest, SamplingParams
from wharf.errors import InvalidParam, WharfError

router = APIRouter(tags=["openai"])

Stop = str | list[str] | None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None              # extension (vLLM)
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: Stop = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None   # extension
    seed: int | None = None
    ignore_eos: bool = False                                        # extension (vLLM)
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = None
    response_format: dict | None = None                             # json_object / json_schema

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return stops

    def sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0), n=self.n, stop=self.stop or [], seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0, logprobs=logprobs,
            ignore_eos=self.ignore_eos)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))


class CompletionBody(_Sampling):
    prompt: str | list[str] = ""
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return v[0]
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None
    tool_calls: list[dict] | None = None        # an assistant's earlier calls
    tool_call_id: str | None = None             # a tool's result: the call it answers

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v):
        """A text part's `text` is a string (5, null, ["a"] are a 400, as OpenAI's)."""
        if isinstance(v, list):
            for i, part in enumerate(v):
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content[{i}].text must be a string")
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""

    def for_engine(self) -> dict:
        m = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            m["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            m["tool_call_id"] = self.tool_call_id
        return m


class Function(BaseModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: Function


class ChatBody(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def tool_use(self) -> ToolUse | None:
        tools = [t.model_dump(exclude_none=True) for t in self.tools or []]
        return ToolUse.parse(tools, self.tool_choice, self.parallel_tool_calls)


FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
          FinishReason.CONTENT: "content_filter", FinishReason.CANCELLED: "stop",
          FinishReason.ERROR: "stop"}


def _usage(run: Run) -> dict:
    return {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens}


def _completion_logprobs(chunks: list[Chunk], offset: int) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    for c in chunks:
        for lp in c.logprobs or []:
            tokens.append(lp.token)
            lps.append(lp.logprob)
            tops.append({t: v for t, _, v in lp.top} if lp.top else None)
            offsets.append(offset)
            offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(chunks: list[Chunk]) -> dict:
    def entry(tok: str, lp: float) -> dict:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
    return {"content": [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, _, v in lp.top]}
                        for c in chunks for lp in (c.logprobs or [])], "refusal": None}


async def _framed(frames):
    """An OpenAI event stream: the frames, an error event if generation fails midway, [DONE]."""
    try:
        async for frame in frames:
            yield frame
    except WharfError as exc:
        yield event({"error": {"message": exc.message, "type": exc.kind}})
    yield event("[DONE]")


async def _admit(request: Request, body_model, build, id_prefix: str):
    """Authenticate, parse, and start a run; returns (body, run) or an error response."""
    state = request.app.state
    try:
        principal = state.platform.authenticator.bearer(bearer_token(request))
    except WharfError as exc:
        return None, openai_error(exc)
    caller = Caller(principal=principal, dialect="openai", connection=request,
                    request_id=name_request(request, id_prefix + uuid.uuid4().hex))
    try:
        body = parse_model(body_model, await json_body(request, state.settings.max_body_bytes))
        caller.user = body.user
        gen = build(body)
    except Exception as exc:   # refused before the pipeline saw it: still one usage record
        if not isinstance(exc, WharfError):
            exc = unexpected(exc)
        state.pipeline.reject(caller, None, exc)
        return None, openai_error(exc)
    try:
        return body, await state.pipeline.start(caller, gen)      # records its own refusals
    except ClientGone:
        return None, gone_response()
    except WharfError as exc:
        return None, openai_error(exc)


@router.post("/v1/completions")
async def completions(request: Request):
    def build(body: CompletionBody) -> GenerationRequest:
        if body.suffix:
            raise InvalidParam("suffix is not supported", param="suffix")
        return GenerationRequest(model=body.model, prompt=body.prompt,
                                 sampling=body.sampling(body.max_tokens if body.max_tokens is not None else 16,
                                                        body.logprobs),
                                 structured=response_format(body.response_format))

    body, run = await _admit(request, CompletionBody, build, "cmpl-")
    if body is None:
        return run
    rid, created = run.request.request_id, int(time.time())
    echo = body.prompt if body.echo else ""

    if body.stream:
        async def stream():
            sent_echo = set()
            async for c in run.chunks():
                text = c.text
                if echo and c.index not in sent_echo:
                    sent_echo.add(c.index)
                    text = echo + text
                lp = _completion_logprobs([c], 0) if body.logprobs is not None else None
                choice = {"index": c.index, "text": text, "logprobs": lp,
                          "finish_reason": FINISH[c.finish_reason] if c.finish_reason else None}
                yield event({"id": rid, "object": "text_completion", "created": created,
                             "model": run.model, "choices": [choice]})
            if body.include_usage:
                yield event({"id": rid, "object": "text_completion", "created": created,
                             "model": run.model, "choices": [], "usage": _usage(run)})
        return sse_response(_framed(stream()), run=run)

    try:
        per_choice = await unless_client_leaves(request, run.whole())
    except ClientGone:
        return gone_response()
    except WharfError as exc:
        return openai_error(exc)
    choices = []
    for i, out in enumerate(per_choice):
        choices.append({"index": i, "text": echo + out.text,
                        "logprobs": _completion_logprobs(out.chunks, len(echo)) if body.logprobs is not None else None,
                        "finish_reason": FINISH[out.finish]})
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": run.model,
                         "choices": choices, "usage": _usage(run)})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    def build(body: ChatBody) -> GenerationRequest:
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidParam("top_logprobs requires logprobs to be true", param="top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens or body.max_tokens
        use = body.tool_use()
        # A forced call constrains the output to the tools; else response_format may.
        structured = (use.constraint() if use else None) or response_format(body.response_format)
        return GenerationRequest(model=body.model, messages=[m.for_engine() for m in body.messages],
                                 sampling=body.sampling(max_tokens, logprobs), structured=structured,
                                 tools=use.shown if use else None)

    body, run = await _admit(request, ChatBody, build, "chatcmpl-")
    if body is None:
        return run
    use = body.tool_use()
    rid, created = run.request.request_id, int(time.time())

    if body.stream:
        async def stream():
            def frame(choices, **extra):
                return event({"id": rid, "object": "chat.completion.chunk", "created": created,
                              "model": run.model, "system_fingerprint": None, "choices": choices, **extra})
            for i in range(body.n):
                yield frame([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
            tool_streams = {i: ToolStream(use) for i in range(body.n)} if use else None
            async for c in run.chunks():
                finish = FINISH[c.finish_reason] if c.finish_reason else None
                if tool_streams is None:
                    deltas = [{"content": c.text} if c.text else {}]
                else:
                    deltas = tool_streams[c.index].feed(c.text)
                    if c.finish_reason:
                        last, called = tool_streams[c.index].finish(c.finish_reason)
                        deltas += last
                        finish = "tool_calls" if called else finish
                    if not deltas and (finish or body.logprobs):
                        deltas = [{}]
                for j, delta in enumerate(deltas):
                    yield frame([{"index": c.index, "delta": delta,
                                  "logprobs": _chat_logprobs([c]) if body.logprobs and j == 0 else None,
                                  "finish_reason": finish if j == len(deltas) - 1 else None}])
            if body.include_usage:
                yield frame([], usage=_usage(run))
        return sse_response(_framed(stream()), run=run)

    try:
        per_choice = await unless_client_leaves(request, run.whole())
    except ClientGone:
        return gone_response()
    except WharfError as exc:
        return openai_error(exc)
    choices = []
    for i, out in enumerate(per_choice):
        chunks, finish = out.chunks, out.finish
        content, calls = use.answer(out.text, finish) if use else (out.text, [])
        message = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = message_calls(calls)
        choices.append({"index": i, "message": message,
                        "logprobs": _chat_logprobs(chunks) if body.logprobs else None,
                        "finish_reason": "tool_calls" if calls else FINISH[finish]})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": run.model,
                         "system_fingerprint": None, "choices": choices, "usage": _usage(run)})


@router.get("/v1/models")
async def list_models(request: Request):
    state = request.app.state
    try:
        state.platform.authenticator.bearer(bearer_token(request))
    except WharfError as exc:
        return openai_error(exc)
    data = []
    for info in state.registry.list():
        card = {"id": info.name, "object": "model", "created": 0, "owned_by": "wharf",
                "root": info.identity, "max_model_len": info.context_length, "backend": info.backend}
        data.append(card)
        for alias in info.aliases:
            data.append({**card, "id": alias, "parent": info.name})
    return {"object": "list", "data": data}


class TokenizeBody(BaseModel):
    """vLLM's /tokenize: a raw prompt, or a chat rendered by the model's template."""
    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    tools: list[Tool] | None = None
    add_special_tokens: bool | None = None
    return_token_strs: bool = False


class DetokenizeBody(BaseModel):
    model: str
    tokens: list[int]


async def _authed_body(request: Request, body_model):
    state = request.app.state
    state.platform.authenticator.bearer(bearer_token(request))
    return parse_model(body_model, await json_body(request, state.settings.max_body_bytes))


@router.post("/tokenize")
async def tokenize(request: Request):
    try:
        body = await _authed_body(request, TokenizeBody)
        if (body.prompt is None) == (body.messages is None):
            raise InvalidParam("give exactly one of prompt or messages", param="prompt")
        messages = [m.for_engine() for m in body.messages] if body.messages is not None else None
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        ids, engine = request.app.state.pipeline.tokenize(body.model, prompt=body.prompt, messages=messages,
                                                          tools=tools, special=body.add_special_tokens)
    except WharfError as exc:
        return openai_error(exc)
    out = {"count": len(ids), "max_model_len": engine.context_length, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = engine.tokenizer.convert_ids_to_tokens(ids)
    return out


@router.post("/detokenize")
async def detokenize(request: Request):
    try:
        body = await _authed_body(request, DetokenizeBody)
        return {"prompt": request.app.state.pipeline.detokenize(body.model, body.tokens)}
    except WharfError as exc:
        return openai_error(exc)


# Every path no other dialect owns is answered in OpenAI's shape (path_errors.py).
DIALECT = Dialect("openai", ("/v1/",), openai_error, router)
