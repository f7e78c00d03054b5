"""Upstream backend: forward generation to any OpenAI-compatible engine over HTTP.

`wharf serve --backend upstream --upstream-url URL` keeps the gateway stateless: the
dialects, authentication, limits, quotas, safety and usage all run here exactly as with
the embedded engine (the policy pipeline only sees an object with the Engine
interface), while tokens are produced by vLLM, SGLang, TGI, a llama.cpp server, Ray
Serve or another Wharf behind it.

Token counts. The gateway needs a prompt size before it sends anything (window check,
quota reservation, rate-limit tokens). With `upstream_tokenizer` set (a Hugging Face
tokenizer folder or a locally cached id) prompts are rendered and counted exactly.
Without it the size is *estimated* (about 4 ASCII characters or 1 other character per
token, plus a few tokens per chat message) and the window is left to the upstream to
enforce (its 400 comes back as InvalidParam with its message). Completion tokens always
come from the upstream's own `usage` (stream_options.include_usage), and every chunk
after that carries the upstream's prompt_tokens too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from wharf.engine.engine import PreparedRequest, fit_window
from wharf.engine.meter import TokenMeter
from wharf.engine.types import Chunk, EngineStats, FinishReason, GenerationRequest, ModelInfo, TokenLogprob
from wharf.errors import ContextLengthExceeded, Internal, InvalidParam, NotFound, Overloaded, Timeout, WharfError

log = logging.getLogger("wharf.upstream")

FINISH = {"stop": FinishReason.STOP, "eos": FinishReason.STOP, "stop_sequence": FinishReason.STOP,
          "length": FinishReason.LENGTH, "max_tokens": FinishReason.LENGTH,
          "content_filter": FinishReason.CONTENT, "abort": FinishReason.CANCELLED,
          "cancelled": FinishReason.CANCELLED, "error": FinishReason.ERROR,
          "tool_calls": FinishReason.STOP, "function_call": FinishReason.STOP}


def estimate_tokens(text: str) -> int:
    """A rough token count for a tokenizer we do not have: ~4 ASCII characters per token,
    one token per other character (CJK text is close to that)."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _message(body: bytes | str) -> str:
    """The human message inside an upstream error body (OpenAI, vLLM, TGI or plain text)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        return text.strip()[:500] or "upstream error"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:500]
        if isinstance(err, str):
            return err[:500]
        if "detail" in data:
            return str(data["detail"])[:500]
    return str(data)[:500]


def error_for_status(status: int, body: bytes | str) -> WharfError:
    """Map an upstream HTTP error onto the one taxonomy."""
    msg = _message(body)
    if status in (400, 413, 422):
        if "context" in msg.lower() and ("length" in msg.lower() or "window" in msg.lower()):
            return ContextLengthExceeded(msg, param="max_tokens")
        return InvalidParam(msg)
    if status == 404:
        return NotFound(msg, reason="model", param="model")
    if status in (401, 403):
        log.error("upstream refused the gateway's credentials (%s): %s", status, msg)
        return Internal("the upstream engine refused the gateway's credentials")
    if status == 504 or status == 408:
        return Timeout("the upstream engine timed out")
    if status == 429 or status >= 500:
        return Overloaded(f"the upstream engine is unavailable ({status})")
    return InvalidParam(msg)


def _stream_error(data: dict) -> WharfError:
    """An error event inside an SSE stream (Wharf: {"error": {"message", "type"}};
    vLLM: {"error": {..., "code": 400}} or {"object": "error", ...})."""
    err = data.get("error", data)
    if not isinstance(err, dict):
        return Overloaded(f"upstream error: {err}")
    msg = str(err.get("message") or "upstream error")
    kind, code = str(err.get("type") or ""), err.get("code")
    if kind in ("timeout",) or code in (408, 504):
        return Timeout(msg)
    if kind in ("invalid_param", "invalid_request", "invalid_request_error", "BadRequestError",
                "context_length_exceeded") or code in (400, 422):
        return InvalidParam(msg)
    if kind in ("overloaded", "rate_limited") or code in (429, 503):
        return Overloaded(msg)
    return Overloaded(f"upstream error: {msg}")


@dataclass
class UpstreamModel:
    """One entry of the upstream's /v1/models."""

    id: str
    root: str
    max_model_len: int | None = None
    parent: str | None = None


def discover(url: str, api_key: str | None = None, timeout: float = 10.0) -> list[UpstreamModel]:
    """GET {url}/v1/models (synchronously, at start-up). Raises RuntimeError with a
    readable cause when the upstream cannot be listed."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"cannot reach upstream {url}: {exc}") from exc
    if r.status_code != 200:
        raise RuntimeError(f"upstream {url}/v1/models answered {r.status_code}: {_message(r.content)}")
    out = []
    for card in r.json().get("data", []):
        if not isinstance(card, dict) or not card.get("id"):
            continue
        mml = card.get("max_model_len") or card.get("context_length") or card.get("context_size")
        out.append(UpstreamModel(id=str(card["id"]), root=str(card.get("root") or card["id"]),
                                 max_model_len=int(mml) if isinstance(mml, (int, float)) and mml > 0 else None,
                                 parent=card.get("parent")))
    return out


def load_tokenizer(name_or_path: str | None):
    """A Hugging Face tokenizer from a folder or the local cache; never downloads."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


class UpstreamEngine:
    """The Engine interface (wharf.engine.engine.Engine) over a remote OpenAI-compatible API."""

    def __init__(self, base_url: str, upstream_model: str, info: ModelInfo, *, api_key: str | None = None,
                 tokenizer=None, connect_timeout: float = 5.0, read_timeout: float = 600.0,
                 max_connections: int | None = None):
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self.info = info
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._client_loop = None
        self.running = 0
        self.meter = TokenMeter()
        self._closed = False

    # -- the Engine interface ------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.info.context_length

    def render_chat(self, messages: list[dict]) -> str:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Exact ids with a tokenizer; otherwise placeholder ids, as many as estimated."""
        if self.tokenizer is not None:
            return self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return [0] * estimate_tokens(text)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        if request.messages is not None:
            text = self.render_chat(request.messages)
            if self.tokenizer is not None:
                n = len(self.tokenize(text, special=False))
            else:   # the upstream renders its own template: a few tokens per message on top
                n = sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in request.messages) + 3
            ids, param = [0] * n if self.tokenizer is None else self.tokenize(text, special=False), "messages"
        else:
            text = request.prompt or ""
            ids, param = self.tokenize(text), "prompt"
        ids = ids or [0]
        max_tokens = fit_window(len(ids), request.sampling.max_tokens, self.context_length, param,
                                exact=self.tokenizer is not None)
        return PreparedRequest(request=request, prompt_ids=ids, prompt_text=text, max_tokens=max_tokens)

    def body(self, prepared: PreparedRequest) -> tuple[str, dict]:
        """The upstream path and JSON body for a prepared request."""
        req, p = prepared.request, prepared.request.sampling
        body: dict = {"model": self.upstream_model, "max_tokens": prepared.max_tokens, "n": p.n,
                      "temperature": p.temperature, "top_p": p.top_p, "stream": True,
                      "stream_options": {"include_usage": True}}
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if p.ignore_eos:
            body["ignore_eos"] = True
        if req.messages is not None:
            body["messages"] = req.messages
            if p.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = p.logprobs
            return "/v1/chat/completions", body
        body["prompt"] = req.prompt or ""
        if p.logprobs is not None:
            body["logprobs"] = p.logprobs
        return "/v1/completions", body

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=_headers(self.api_key),
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=64))
            self._client_loop = loop
        return self._client

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream chunks of every choice from the upstream; raises Overloaded, Timeout,
        InvalidParam (upstream 4xx). Closing this generator closes the upstream stream."""
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        if self._closed:
            raise Overloaded("the engine is shutting down")
        req = prepared.request
        n = req.sampling.n
        path, body = self.body(prepared)
        chat = req.messages is not None
        prompt_tokens = len(prepared.prompt_ids)
        counted = [0] * n                       # content deltas seen per choice
        held: dict[int, Chunk] = {}             # finish chunks, held until usage arrives

        def remaining() -> float:
            if req.deadline is None:
                return self.read_timeout
            left = req.deadline - time.monotonic()
            if left <= 0:
                raise Timeout("the request ran past its deadline")
            return min(left, self.read_timeout)

        self.running += 1
        try:
            timeout = httpx.Timeout(remaining(), connect=min(self.connect_timeout, remaining()))
            try:
                async with self._http().stream("POST", path, json=body, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        raise error_for_status(resp.status_code, await resp.aread())
                    lines = resp.aiter_lines()
                    while True:
                        try:
                            line = await asyncio.wait_for(lines.__anext__(), remaining())
                        except StopAsyncIteration:
                            break
                        except asyncio.TimeoutError:
                            raise Timeout("the upstream engine did not answer before the deadline") from None
                        if not line.startswith("data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            break
                        try:
                            data = json.loads(payload)
                        except ValueError:
                            continue
                        if not isinstance(data, dict):
                            continue
                        if "error" in data or data.get("object") == "error":
                            raise _stream_error(data)
                        usage = data.get("usage")
                        for choice in data.get("choices") or []:
                            i = int(choice.get("index", 0))
                            if not 0 <= i < n:
                                continue
                            if chat:
                                text = (choice.get("delta") or {}).get("content") or ""
                            else:
                                text = choice.get("text") or ""
                            logprobs = self._logprobs(choice.get("logprobs"), chat)
                            ntok = len(logprobs) if logprobs else (1 if text else 0)
                            counted[i] += ntok
                            self.meter.add(ntok)
                            finish = choice.get("finish_reason")
                            if text or logprobs:
                                yield Chunk(index=i, text=text, logprobs=logprobs, prompt_tokens=prompt_tokens,
                                            completion_tokens=counted[i])
                            if finish:
                                held[i] = Chunk(index=i, finish_reason=FINISH.get(str(finish), FinishReason.STOP),
                                                prompt_tokens=prompt_tokens, completion_tokens=counted[i])
                        if usage:
                            prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
                            total = usage.get("completion_tokens")
                            if isinstance(total, int) and total >= 0:
                                counted = _distribute(total, counted)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout):
                    raise Overloaded("the upstream engine is unreachable (connect timeout)") from None
                if isinstance(exc, httpx.PoolTimeout):
                    raise Overloaded("too many requests in flight to the upstream engine") from None
                raise Timeout("the upstream engine did not answer in time") from None
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                    httpx.NetworkError) as exc:
                raise Overloaded(f"the upstream engine is unavailable ({type(exc).__name__})") from None
            # Final chunks, now with the upstream's real token counts.
            for i in range(n):
                finish = held.get(i)
                reason = finish.finish_reason if finish else FinishReason.STOP
                if finish is None:
                    log.warning("upstream stream for %s ended without a finish_reason for choice %d",
                                req.request_id, i)
                yield Chunk(index=i, finish_reason=reason, prompt_tokens=prompt_tokens,
                            completion_tokens=counted[i])
        finally:
            self.running -= 1

    @staticmethod
    def _logprobs(lp, chat: bool) -> list[TokenLogprob] | None:
        if not lp:
            return None
        out = []
        if chat:
            for e in lp.get("content") or []:
                tops = [(t.get("token", ""), -1, float(t.get("logprob", 0.0))) for t in e.get("top_logprobs") or []]
                out.append(TokenLogprob(token=e.get("token", ""), token_id=-1,
                                        logprob=float(e.get("logprob", 0.0)), top=tops))
            return out or None
        tokens = lp.get("tokens") or []
        values = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        for k, tok in enumerate(tokens):
            top = tops[k] if k < len(tops) and isinstance(tops[k], dict) else {}
            out.append(TokenLogprob(token=tok, token_id=-1,
                                    logprob=float(values[k]) if k < len(values) and values[k] is not None else 0.0,
                                    top=[(t, -1, float(v)) for t, v in top.items()]))
        return out or None

    def stats(self) -> EngineStats:
        return EngineStats(waiting=0, running=self.running, max_batch_size=0,
                           generated_tokens=self.meter.total, tokens_per_second=self.meter.per_second())

    def shutdown(self) -> None:
        """Refuse new work and drop the connection pool (its loop may already be gone)."""
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        loop = self._client_loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))


def _distribute(total: int, counted: list[int]) -> list[int]:
    """Split the upstream's total completion tokens over the choices, in proportion to the
    deltas each one streamed (exact for n = 1)."""
    if len(counted) == 1:
        return [total]
    seen = sum(counted)
    if seen == 0:
        base, extra = divmod(total, len(counted))
        return [base + (1 if i < extra else 0) for i in range(len(counted))]
    out = [total * c // seen for c in counted]
    out[-1] += total - sum(out)
    return out


def build_upstream_engines(url: str, *, api_key: str | None, models: dict[str, str] | None,
                           default_context: int, tokenizer: str | None = None, read_timeout: float = 600.0,
                           log_fn=lambda m: None) -> tuple[list[UpstreamEngine], dict[str, str]]:
    """Discover the upstream's models and build one engine per model.

    `models`: local NAME -> upstream id to expose (empty: every upstream model under its
    own id). Returns (engines, aliases) where aliases are the upstream's own aliases
    (cards with a `parent` and the parent's root) re-created locally."""
    cards = discover(url, api_key)
    if not cards:
        raise RuntimeError(f"upstream {url} lists no models")
    by_id = {c.id: c for c in cards}
    tok = load_tokenizer(tokenizer)
    aliases: dict[str, str] = {}
    if models:
        wanted = {}
        for name, upstream_id in models.items():
            if upstream_id not in by_id:
                raise RuntimeError(f"upstream {url} has no model {upstream_id!r} (it lists: "
                                   f"{', '.join(sorted(by_id))})")
            wanted[name] = by_id[upstream_id]
    else:
        wanted = {}
        for c in cards:
            parent = by_id.get(c.parent) if c.parent else None
            if parent is not None and parent.root == c.root:
                aliases[c.id] = parent.id     # a Wharf alias: same weights under another name
            else:
                wanted[c.id] = c
    engines = []
    for name, card in wanted.items():
        info = ModelInfo(name=name, identity=card.root, path=f"{url.rstrip('/')}#{card.id}", backend="upstream",
                         context_length=card.max_model_len or default_context, dtype="n/a")
        engines.append(UpstreamEngine(url, card.id, info, api_key=api_key, tokenizer=tok,
                                      read_timeout=read_timeout))
        log_fn(f"upstream model {name} -> {url} ({card.id}, {card.root})")
    aliases = {a: t for a, t in aliases.items() if t in wanted}
    return engines, aliases
