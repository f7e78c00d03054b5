"""Upstream backend: forward generation to any OpenAI-compatible engine over HTTP.

`wharf serve --backend upstream --upstream-url URL [--upstream-url URL ...]` keeps the
gateway stateless: the dialects, authentication, limits, quotas, safety and usage all
run here exactly as with the embedded engine (the policy pipeline only sees an object
with the Engine interface), while tokens are produced by vLLM, SGLang, TGI, a llama.cpp
server, Ray Serve or another Wharf behind it. With several URLs (replicas of one engine), each
request goes to the least busy healthy replica that serves its model (upstream_pool.py),
and fails over to the next one while nothing has been streamed to the caller yet.

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
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx

from wharf.engine import tool_calls
from wharf.engine.external.upstream_pool import UpstreamModel, UpstreamPool, model_cards
from wharf.engine.external.upstream_pool import auth_headers as _headers
from wharf.engine.meter import TokenMeter
from wharf.engine.prompt import PreparedRequest, PromptSide
from wharf.engine.types import (
    Chunk,
    EngineStats,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
)
from wharf.errors import (
    ContextLengthExceeded,
    Internal,
    InvalidParam,
    NotFound,
    Overloaded,
    Timeout,
    WharfError,
)

log = logging.getLogger("wharf.upstream")

FINISH = {"stop": FinishReason.STOP, "eos": FinishReason.STOP, "stop_sequence": FinishReason.STOP,
          "length": FinishReason.LENGTH, "max_tokens": FinishReason.LENGTH,
          "content_filter": FinishReason.CONTENT, "abort": FinishReason.CANCELLED,
          "cancelled": FinishReason.CANCELLED, "error": FinishReason.ERROR,
          "tool_calls": FinishReason.STOP, "function_call": FinishReason.STOP}


class UpstreamUnavailable(Overloaded):
    """Overloaded, raised by one replica before it produced anything, so another replica
    may take the request: unreachable (`down`: it is marked down), 502/503/429, or the
    connection closed early. Clients see it as any Overloaded."""

    def __init__(self, message: str, *, down: bool = False):
        super().__init__(message)
        self.down = down


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


def _param(body: bytes | str) -> str | None:
    """The request field an OpenAI-shaped error names ({"error": {"param": ...}}), if any."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, TypeError, AttributeError):
        return None
    param = err.get("param") if isinstance(err, dict) else None
    return param if isinstance(param, str) else None


def error_for_status(status: int, body: bytes | str) -> WharfError:
    """Map an upstream HTTP error onto the one taxonomy."""
    msg = _message(body)
    if status in (400, 413, 422):
        if "context" in msg.lower() and ("length" in msg.lower() or "window" in msg.lower()):
            return ContextLengthExceeded(msg, param="max_tokens")
        return InvalidParam(msg, param=_param(body))
    if status == 404:
        return NotFound(msg, reason="model", param="model")
    if status in (401, 403):
        log.error("upstream refused the gateway's credentials (%s): %s", status, msg)
        return Internal("the upstream engine refused the gateway's credentials")
    if status == 504 or status == 408:
        return Timeout("the upstream engine timed out")
    if status in (429, 502, 503):
        # This replica is full or its proxy has no engine behind it; another may not be.
        return UpstreamUnavailable(f"the upstream engine is unavailable ({status})")
    if status >= 500:
        # A 500 is likely this request's own doing: another replica would fail it too.
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
        return UpstreamUnavailable(msg)
    return Overloaded(f"upstream error: {msg}")


def discover(url: str, api_key: str | None = None, timeout: float = 10.0) -> list[UpstreamModel]:
    """GET {url}/v1/models (synchronously, at start-up). Raises RuntimeError with a
    readable cause when the upstream cannot be listed."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"cannot reach upstream {url}: {exc}") from exc
    if r.status_code != 200:
        raise RuntimeError(f"upstream {url}/v1/models answered {r.status_code}: {_message(r.content)}")
    try:
        return model_cards(r.json())
    except ValueError as exc:
        raise RuntimeError(f"upstream {url}/v1/models answered no JSON: {exc}") from exc


def load_tokenizer(name_or_path: str | None):
    """A Hugging Face tokenizer from a folder or the local cache; never downloads."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


class UpstreamEngine(PromptSide):
    """The Engine interface (wharf/engine/interface.py) over remote OpenAI-compatible
    APIs: one model, served by one or more replicas of `pool` (shared by all models)."""

    def __init__(self, pool: UpstreamPool, upstream_model: str, info: ModelInfo, *, tokenizer=None,
                 read_timeout: float = 600.0):
        self.pool = pool
        self.upstream_model = upstream_model
        self.info = info
        self.tokenizer = tokenizer
        self.read_timeout = read_timeout
        self.running = 0
        self.meter = TokenMeter()
        self._closed = False

    # -- the Engine interface ------------------------------------------------------------

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
        if req.structured is not None:    # vLLM, SGLang and llama.cpp's server take OpenAI's form
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "wharf", "schema": req.structured.json_schema, "strict": True}}
        if req.messages is not None:
            # Tools (auto) go as Wharf renders them, in Hermes' form: the answer comes back as
            # text that Wharf parses, whatever tool parser the upstream has (or has not).
            body["messages"] = (tool_calls.for_template(req.messages, req.tools, native=False)
                                if req.tools or any(m.get("tool_calls") or m["role"] == "tool" for m in req.messages)
                                else req.messages)
            if p.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = p.logprobs
            return "/v1/chat/completions", body
        body["prompt"] = req.prompt or ""
        if p.logprobs is not None:
            body["logprobs"] = p.logprobs
        return "/v1/completions", body

    async def generate(self, prepared: PreparedRequest | GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream chunks of every choice from one replica; raises Overloaded, Timeout,
        InvalidParam (upstream 4xx). Closing this generator closes the upstream stream.

        Failover: a replica that fails before the first chunk reached the caller
        (UpstreamUnavailable) is replaced by the next healthy one, each replica at most once,
        within the request's deadline. After a chunk has been yielded the error is raised:
        a second replica would repeat text the client already has."""
        if isinstance(prepared, GenerationRequest):
            prepared = self.prepare(prepared)
        if self._closed:
            raise Overloaded("the engine is shutting down")
        self.pool.start_probing()
        tried: list = []
        failure: UpstreamUnavailable | None = None
        self.running += 1
        try:
            while True:
                deadline = prepared.request.deadline
                if tried and deadline is not None and time.monotonic() >= deadline:
                    raise Timeout("the request ran past its deadline")   # before blaming another replica
                member = self.pool.acquire(self.upstream_model, exclude=tried)
                if member is None:
                    if failure is not None:
                        raise failure
                    log.warning("no healthy upstream serves %s (%s)", self.upstream_model,
                                ", ".join(f"{s.url} {'up' if s.healthy else 'down'}" for s in self.pool.stats()))
                    raise Overloaded("no upstream engine for this model is up")
                tried.append(member)
                yielded, failed, down = False, False, False
                try:
                    async with contextlib.aclosing(self._stream(self.pool.client(member), prepared)) as chunks:
                        async for chunk in chunks:
                            yielded = True
                            yield chunk
                    return
                except UpstreamUnavailable as exc:
                    failed, down = True, exc.down
                    if yielded:
                        raise
                    failure = exc
                    log.warning("upstream %s failed %s before its first token (%s); trying another",
                                member.url, prepared.request.request_id, exc)
                except (Overloaded, Timeout, Internal):
                    failed = True
                    raise
                finally:
                    self.pool.release(member, failed=failed, down=down)
        finally:
            self.running -= 1

    async def _stream(self, client: httpx.AsyncClient, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        """One attempt on one replica: the OpenAI stream translated into Chunks."""
        req = prepared.request
        n = req.sampling.n
        path, body = self.body(prepared)
        chat = req.messages is not None
        prompt_tokens = prepared.prompt_tokens
        counted = [0] * n                       # content deltas seen per choice
        held: dict[int, Chunk] = {}             # finish chunks, held until usage arrives

        def remaining() -> float:
            if req.deadline is None:
                return self.read_timeout
            left = req.deadline - time.monotonic()
            if left <= 0:
                raise Timeout("the request ran past its deadline")
            return min(left, self.read_timeout)

        timeout = httpx.Timeout(remaining(), connect=min(self.pool.connect_timeout, remaining()))
        try:
            async with client.stream("POST", path, json=body, timeout=timeout) as resp:
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
                raise UpstreamUnavailable("the upstream engine is unreachable (connect timeout)", down=True) from None
            if isinstance(exc, httpx.PoolTimeout):
                raise UpstreamUnavailable("too many requests in flight to the upstream engine") from None
            raise Timeout("the upstream engine did not answer in time") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                httpx.NetworkError) as exc:
            # Refused or unresolvable: the replica is down. Closed or reset mid-request: it
            # may have died, or only this connection did; the next connect will tell.
            raise UpstreamUnavailable(f"the upstream engine is unavailable ({type(exc).__name__})",
                                      down=isinstance(exc, httpx.ConnectError)) from None
        # Final chunks, now with the upstream's real token counts.
        for i in range(n):
            finish = held.get(i)
            reason = finish.finish_reason if finish else FinishReason.STOP
            if finish is None:
                log.warning("upstream stream for %s ended without a finish_reason for choice %d",
                            req.request_id, i)
            yield Chunk(index=i, finish_reason=reason, prompt_tokens=prompt_tokens,
                        completion_tokens=counted[i])

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
                           generated_tokens=self.meter.total, tokens_per_second=self.meter.per_second(),
                           upstreams=self.pool.stats())

    def shutdown(self) -> None:
        """Refuse new work; stop the pool's probes and connections (shared: idempotent)."""
        self._closed = True
        self.pool.shutdown()


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


def build_upstream_engines(urls: str | list[str], *, api_key: str | None, models: dict[str, str] | None,
                           default_context: int, tokenizer: str | None = None, read_timeout: float = 600.0,
                           log_fn=lambda m: None) -> tuple[list[UpstreamEngine], dict[str, str]]:
    """Discover the models of every upstream replica and build one engine per model, all
    on one UpstreamPool.

    At least one replica must answer; the others are logged as down and join when the
    pool's probe reaches them. A model's card (root, parent) comes from the first replica
    that lists it, its window is the smallest any replica reports; a replica listing the
    same id with other weights is not used for it. `models`: local NAME -> upstream id to
    expose (empty: every upstream model under its own id). Returns (engines, aliases) where
    aliases are the upstream's own aliases (cards with a `parent` and the parent's root)
    re-created locally."""
    pool = UpstreamPool([urls] if isinstance(urls, str) else urls, api_key=api_key)
    by_id: dict[str, UpstreamModel] = {}
    windows: dict[str, list[int]] = {}
    serving: dict[str, list[str]] = {}
    errors, answered = [], []
    for member in pool.members:
        try:
            cards = discover(member.url, api_key)
        except RuntimeError as exc:
            errors.append(str(exc))
            pool.mark_down(member)
            continue
        answered.append(member.url)
        pool.mark_up(member, cards)
        for c in cards:
            first = by_id.setdefault(c.id, c)
            if first.root != c.root:
                log_fn(f"upstream {member.url} serves {c.id} as {c.root}, not {first.root}: not used for it")
                continue
            serving.setdefault(c.id, []).append(member.url)
            if c.max_model_len:
                windows.setdefault(c.id, []).append(c.max_model_len)
    if not answered:
        raise RuntimeError("; ".join(errors))
    for error in errors:
        log_fn(f"{error} (it joins when it answers)")
    one = len(answered) == 1
    where = f"upstream {answered[0]}" if one else "upstreams " + ", ".join(answered)
    if not by_id:
        raise RuntimeError(f"{where} {'lists' if one else 'list'} no models")
    pool.expected_roots = {c.id: c.root for c in by_id.values()}
    tok = load_tokenizer(tokenizer)
    aliases: dict[str, str] = {}
    if models:
        wanted = {}
        for name, upstream_id in models.items():
            if upstream_id not in by_id:
                raise RuntimeError(f"{where} {'has' if one else 'have'} no model {upstream_id!r} "
                                   f"({'it lists' if one else 'they list'}: {', '.join(sorted(by_id))})")
            wanted[name] = by_id[upstream_id]
    else:
        wanted = {}
        for c in by_id.values():
            parent = by_id.get(c.parent) if c.parent else None
            if parent is not None and parent.root == c.root:
                aliases[c.id] = parent.id     # a Wharf alias: same weights under another name
            else:
                wanted[c.id] = c
    engines = []
    for name, card in wanted.items():
        window = min(windows.get(card.id) or [default_context])
        info = ModelInfo(name=name, identity=card.root, path=f"{','.join(serving[card.id])}#{card.id}",
                         backend="upstream", context_length=window, dtype="n/a")
        engines.append(UpstreamEngine(pool, card.id, info, tokenizer=tok, read_timeout=read_timeout))
        log_fn(f"upstream model {name} -> {', '.join(serving[card.id])} ({card.id}, {card.root})")
    aliases = {a: t for a, t in aliases.items() if t in wanted}
    return engines, aliases
