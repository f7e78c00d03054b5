"""One policy code path for every dialect.

A dialect authenticates the caller in its own scheme and translates its body into a
GenerationRequest; from there this module does the rest the same way for all:
resolve the model, check the window, input safety, rate limits, quota reservation,
generation with the output guard, then quota settlement, usage (exactly once) and
metrics. Dialects only format what comes out and map errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from wharf.api.disconnect import unless_client_leaves
from wharf.engine.interface import Engine
from wharf.engine.prompt import PreparedRequest
from wharf.engine.types import Chunk, FinishReason, GenerationRequest
from wharf.errors import ContentBlocked, InvalidParam, Overloaded, QuotaExceeded, RateLimited, WharfError
from wharf.platform import key_scope
from wharf.platform.auth import Principal
from wharf.platform.limits import Limits
from wharf.platform.tenancy import LimitValues, rate_limits

log = logging.getLogger("wharf.pipeline")

# Texts longer than this are rendered and tokenized in a worker thread: the event loop
# serves everyone else meanwhile. Shorter ones stay inline, where a thread hop would cost
# more than the work.
LARGE_TEXT_CHARS = 16_384


async def _prepare(engine: Engine, request: GenerationRequest) -> PreparedRequest:
    """engine.prepare, in a worker thread when the prompt is LARGE_TEXT_CHARS or more, or
    when a grammar may have to be compiled."""
    if request.structured is not None:
        return await asyncio.to_thread(engine.prepare, request)
    if request.messages is not None:
        size = sum(len(str(m.get("content", ""))) for m in request.messages)
    else:
        size = len(request.prompt or "")
    if size >= LARGE_TEXT_CHARS:
        return await asyncio.to_thread(engine.prepare, request)
    return engine.prepare(request)


@dataclass
class Caller:
    principal: Principal
    dialect: str
    service_id: int | None = None
    service_limits: tuple[int | None, int | None] = (None, None)   # (rpm, tpm)
    user: str | None = None
    # The HTTP request, when there is one: a client that hangs up while its request waits
    # in the engine's queue is noticed there, not after its prefill (api/disconnect.py).
    connection: object | None = None
    # The id the dialect gave this request (api/request_ids.py): the usage record's key.
    request_id: str | None = None


@dataclass
class ChoiceState:
    text: list[str] = field(default_factory=list)
    finish: FinishReason | None = None
    completion_tokens: int = 0

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.text)


def _content(caller: Caller, request: GenerationRequest | None,
             outputs: list[str] | None) -> tuple[int, str, list[str]] | None:
    """What to keep of a request whose account opted in to storing content (retention
    days, prompt or the chat's messages as JSON, what each choice sent); None otherwise."""
    days = caller.principal.content_retention_days
    if not days or request is None:
        return None
    prompt = (json.dumps(request.messages, ensure_ascii=False, default=str) if request.messages is not None
              else request.prompt or "")
    return days, prompt, outputs or []


def _limits(rpm=None, tpm=None, qps=None, conc=None, *, scope: str = "") -> Limits | None:
    """None = no limit, 0 = nothing allowed (raises RateLimited), n = at most n."""
    return rate_limits(rpm, tpm, qps, conc, scope=scope)


class _TokenGate:
    """One choice's token-level views (token ids, logprobs) kept in step with the text the
    output guard lets out. The engine sends each chunk's tokens with the text they made;
    a chunk's tokens leave only with the last character of that text, and text leaves
    only up to the end of a chunk, so what a caller sees of tokens and of text is cut at
    the same point: no token whose text (or part of it) the guard held back or cut."""

    __slots__ = ("received", "sent", "ready", "groups")

    def __init__(self):
        self.received = 0                   # characters of engine text given to the guard
        self.sent = 0                       # characters passed on to the caller
        self.ready = ""                     # let out by the guard, waiting for its chunk's end
        self.groups: deque[tuple[int, list, list | None]] = deque()   # (end, ids, logprobs)

    def push(self, chunk: Chunk) -> None:
        self.received += len(chunk.text)
        self.groups.append((self.received, chunk.token_ids, chunk.logprobs))

    def release(self, text: str) -> tuple[str, list, list]:
        """What of the guard's output `text` may go now, with the tokens that made it."""
        if not self.ready and len(self.groups) == 1 and self.sent + len(text) == self.received:
            _, ids, lps = self.groups.popleft()           # the usual case: nothing held
            self.sent = self.received
            return text, ids, lps or []
        avail = self.ready + text
        limit = self.sent + len(avail)
        ids: list = []
        lps: list = []
        upto = self.sent
        while self.groups and self.groups[0][0] <= limit:
            upto, i, lp = self.groups.popleft()
            ids.extend(i)
            lps.extend(lp or ())
        out, self.ready = avail[:upto - self.sent], avail[upto - self.sent:]
        self.sent = upto
        return out, ids, lps


@dataclass
class ChoiceOutput:
    """One choice of a whole (non-streamed) answer."""

    chunks: list[Chunk]
    text: str
    finish: FinishReason


class Run:
    """An admitted request. Iterate `chunks()` once; everything is settled when it ends,
    however it ends (finished, blocked, failed, or the client went away)."""

    def __init__(self, pipeline: "Pipeline", caller: Caller, engine: Engine,
                 prepared: PreparedRequest, lease, reserved: bool, reserved_chars: int = 0):
        self.pipeline, self.caller, self.engine, self.prepared = pipeline, caller, engine, prepared
        self.lease, self.reserved = lease, reserved
        self.reserved_chars = reserved_chars
        self.request = prepared.request
        self.model = engine.info.name
        self.prompt_tokens = prepared.prompt_tokens
        self.choices = [ChoiceState() for _ in range(self.request.sampling.n)]
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.status = "cancelled"     # until proven otherwise
        self._closed = False
        self._source: AsyncIterator[Chunk] | None = None   # the engine's chunks, once begun
        self._first: Chunk | None = None

    async def begin(self) -> None:
        """Wait until the engine has taken the request and made its first chunk, so that
        a refusal (queue full, shutting down, an upstream's 503, a timeout in the queue)
        is raised here, before a dialect answers 200 and starts a stream: SDKs retry a
        503, not an error event inside a 200. Settles the run when it raises."""
        self._source = self.engine.generate(self.prepared).__aiter__()
        try:
            self._first = await self._source.__anext__()
        except StopAsyncIteration:
            pass
        except WharfError as exc:
            self.status = f"error:{exc.kind}"
            self.close()
            raise
        except BaseException:        # cancelled while waiting: recorded as such
            self.close()
            raise

    async def _engine_chunks(self) -> AsyncIterator[Chunk]:
        if self._source is None:
            self._source = self.engine.generate(self.prepared).__aiter__()
        elif self._first is not None:
            yield self._first
        async for chunk in self._source:
            yield chunk

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def generated_chars(self) -> int:
        return sum(c.chars for c in self.choices)

    async def whole(self) -> list[ChoiceOutput]:
        """A non-streamed answer: per choice its chunks, text and finish reason (STOP where
        none came). The chunks' generator is closed here, also when the caller's task is
        cancelled (the client left), so the run settles at once."""
        per_choice: list[list[Chunk]] = [[] for _ in self.choices]
        chunks = self.chunks()
        try:
            async for c in chunks:
                per_choice[c.index].append(c)
        finally:
            await chunks.aclose()
        return [ChoiceOutput(chunks=cs, text="".join(c.text for c in cs),
                             finish=next((c.finish_reason for c in reversed(cs) if c.finish_reason),
                                         FinishReason.STOP))
                for cs in per_choice]

    async def chunks(self) -> AsyncIterator[Chunk]:
        guards = [self.pipeline.safety.stream_guard() for _ in self.choices]
        gates = [_TokenGate() for _ in self.choices]
        try:
            async for chunk in self._engine_chunks():
                state, guard = self.choices[chunk.index], guards[chunk.index]
                if state.finish is not None:
                    continue                      # a choice cut by the output guard
                if self.ttft is None:
                    self.ttft = time.monotonic() - self.started
                state.completion_tokens = chunk.completion_tokens
                if chunk.prompt_tokens:       # an upstream engine knows the real count
                    self.prompt_tokens = chunk.prompt_tokens
                gate = gates[chunk.index]
                gate.push(chunk)
                text = guard.feed(chunk.text)
                if guard.blocked:
                    chunk.finish_reason = FinishReason.CONTENT
                    self.pipeline.metrics.content_blocked("output")
                elif chunk.finish_reason is not None:
                    text += guard.flush()
                # Token ids and logprobs are cut where the text is (everything past the
                # guard's cut is dropped with the rest of the choice).
                had_logprobs = chunk.logprobs is not None
                chunk.text, chunk.token_ids, lps = gate.release(text)
                chunk.logprobs = lps if had_logprobs else None
                room = self._make_room(len(chunk.text))
                extra: list[Chunk] = []
                if room < len(chunk.text):
                    # The day's character quota ran out mid-answer: cut at the boundary
                    # and end every choice as "length".
                    chunk.text, chunk.finish_reason = chunk.text[:room], FinishReason.LENGTH
                    # Token-level views never show text that was not sent.
                    chunk.token_ids = []
                    chunk.logprobs = None if chunk.logprobs is None else []
                    extra = [Chunk(index=i, finish_reason=FinishReason.LENGTH, prompt_tokens=self.prompt_tokens,
                                   completion_tokens=c.completion_tokens)
                             for i, c in enumerate(self.choices) if c.finish is None and i != chunk.index]
                state.text.append(chunk.text)
                state.finish = chunk.finish_reason
                for e in extra:
                    self.choices[e.index].finish = FinishReason.LENGTH
                last = all(c.finish is not None for c in self.choices)
                if last:
                    # Settled before the last yield: a caller that stops reading at the
                    # final chunk has still received everything.
                    blocked = any(c.finish is FinishReason.CONTENT for c in self.choices)
                    self.status = "blocked" if blocked else "ok"
                yield chunk
                for e in extra:
                    yield e
                if last:
                    break
        except WharfError as exc:
            self.status = f"error:{exc.kind}"
            raise
        except BaseException:
            # GeneratorExit / CancelledError: the client went away mid-stream (unless
            # everything had already been delivered).
            if not all(c.finish is not None for c in self.choices):
                self.status = "cancelled"
            raise
        finally:
            await self.aclose()

    def _make_room(self, n: int) -> int:
        """How many of the next `n` characters the character quota allows, growing the
        reservation in blocks when the answer outgrows its estimate."""
        need = self.generated_chars + n - self.reserved_chars
        if need <= 0 or not self.reserved:
            return n
        quota = self.pipeline.platform.quota
        for grow in (max(need, 256), need):
            if quota.extend(self.request.request_id, chars=grow):
                self.reserved_chars += grow
                return n
        return max(0, self.reserved_chars - self.generated_chars)

    async def aclose(self) -> None:
        """End the run wherever its reader stopped: stop the engine's work on it, then
        settle. A reader suspended at a `yield` when its client left is otherwise closed
        only when the garbage collector finds it (`async for` closes nothing it leaves),
        and until then the engine generates for no one and the usage record is missing."""
        try:
            if self._source is not None:
                await self._source.aclose()
        finally:
            self.close()

    def close(self) -> None:
        """Settle quota and limits and write the usage record. Synchronous on purpose: it
        runs inside cancelled tasks, where an await would be interrupted again."""
        if self._closed:
            return
        self._closed = True
        p, caller = self.pipeline, self.caller
        latency = time.monotonic() - self.started
        if self.lease is not None:
            try:
                self.lease.adjust_tokens(self.prompt_tokens + self.completion_tokens)
            except Exception:
                log.exception("rate-limit settle failed")
            self.lease.release()
        p.record(caller, self.request, self.model, status=self.status, prompt_tokens=self.prompt_tokens,
                 completion_tokens=self.completion_tokens, chars=self.generated_chars,
                 ttft=self.ttft, latency=latency, settle_quota=self.reserved,
                 outputs=["".join(c.text) for c in self.choices])


class Pipeline:
    def __init__(self, registry, platform, limiter, safety, metrics, *, timeout_s: float | None = None,
                 default_limits: LimitValues | Limits | None = None):
        """`default_limits`: the platform's per-account defaults (rpm, tpm, qps,
        max_concurrency; None = no limit, 0 = nothing allowed), used field by field where
        an account sets none of its own."""
        self.registry, self.platform = registry, platform
        self.limiter, self.safety, self.metrics = limiter, safety, metrics
        self.timeout_s = timeout_s
        self.default_limits = default_limits or LimitValues()
        for name in ("rpm", "tpm", "qps", "max_concurrency"):
            if getattr(self.default_limits, name, None) == 0:
                log.warning("WHARF_DEFAULT_%s=0: every account without its own %s is refused every "
                            "request (0 means nothing allowed; unset it for no limit)", name.upper(), name)

    def engine_for(self, model: str) -> Engine:
        return self.registry.resolve(model)

    def tokenize(self, model: str, *, prompt: str | None = None, messages: list[dict] | None = None,
                 tools: list[dict] | None = None, special: bool | None = None) -> tuple[list[int], Engine]:
        """A prompt's or a chat's token ids as the model sees them (the chat rendered by its
        template, with the generation prompt); `special`: add BOS/EOS (default: only to a
        raw prompt, as generation does)."""
        engine = self.registry.resolve(model)
        if messages is not None:
            text = engine.render_chat(messages, tools)
            return engine.tokenize(text, special=bool(special)), engine
        return engine.tokenize(prompt or "", special=special is not False), engine

    def detokenize(self, model: str, tokens: list[int]) -> str:
        tokenizer = self.registry.resolve(model).tokenizer
        if tokenizer is None:
            raise InvalidParam("this model has no local tokenizer (an upstream engine without one)", param="model")
        if any(not 0 <= t < len(tokenizer) for t in tokens):
            raise InvalidParam(f"tokens must be ids in [0, {len(tokenizer)})", param="tokens")
        return tokenizer.decode(tokens)

    async def start(self, caller: Caller, request: GenerationRequest) -> Run:
        """Admit a request or raise the WharfError that says why not (and record it)."""
        engine = None
        if caller.request_id:
            request.request_id = caller.request_id
        if request.deadline is None and self.timeout_s:
            request.deadline = time.monotonic() + self.timeout_s
        try:
            request.sampling.check()
            # Fair shares of the batch and prefix-cache reuse go by account: one account's
            # load or cached prompts never show in another's service.
            request.tenant = f"account:{caller.principal.account_id}"
            engine = self.registry.resolve(request.model)
            key_scope.check(caller.principal, (request.model, engine.info.name), caller.service_id)
            prepared = await _prepare(engine, request)
            try:
                if request.messages is not None:
                    for m in request.messages:
                        self.safety.check_input(str(m.get("content", "")))
                else:
                    self.safety.check_input(prepared.prompt_text)
            except ContentBlocked as exc:
                exc.prompt_tokens = prepared.prompt_tokens
                raise
            params = request.sampling
            worst_tokens = params.n * prepared.max_tokens
            try:
                lease = await self.limiter.aacquire(self._scopes(caller),
                                                    tokens=prepared.prompt_tokens + worst_tokens)
            except WharfError:
                raise
            except Exception as exc:      # Redis down: fail closed, retryable, and recorded
                log.warning("rate limiter unavailable: %s", exc)
                raise Overloaded("the rate limiter is unavailable; retry shortly") from None
            try:
                # Worst case in tokens; characters start at one per token (right for
                # Chinese) and the reservation grows atomically if the answer needs more
                # (Run._make_room), so a character quota is never overspent.
                # The account's and the credential's quotas at once: the tighter one refuses.
                self.platform.quota.reserve(caller.principal.account_id, request.request_id,
                                            chars=worst_tokens, tokens=prepared.prompt_tokens + worst_tokens,
                                            credential_id=caller.principal.credential_id)
            except BaseException:
                lease.release()
                raise
            run = Run(self, caller, engine, prepared, lease, reserved=True, reserved_chars=worst_tokens)
        except WharfError as exc:
            self.reject(caller, request, exc, model=engine.info.name if engine else request.model)
            raise
        begun = run.begin()          # records its own refusal
        await (unless_client_leaves(caller.connection, begun) if caller.connection is not None else begun)
        return run

    def reject(self, caller: Caller, request: GenerationRequest | None, exc: WharfError,
               model: str = "") -> None:
        """A request that passed authentication but was refused: count it once."""
        if isinstance(exc, RateLimited):
            self.metrics.rate_limited(exc.reason or "rpm")
        elif isinstance(exc, QuotaExceeded):
            self.metrics.quota_rejected()
        elif isinstance(exc, ContentBlocked):
            self.metrics.content_blocked("input")
        status = "blocked" if isinstance(exc, ContentBlocked) else f"error:{exc.kind}"
        self.record(caller, request, model or (request.model if request else ""), status=status)

    def record(self, caller: Caller, request: GenerationRequest | None, model: str, *, status: str,
               prompt_tokens: int = 0, completion_tokens: int = 0, chars: int = 0,
               ttft: float | None = None, latency: float | None = None, settle_quota: bool = False,
               outputs: list[str] | None = None) -> None:
        """Write the usage record (with `settle_quota`, in the same transaction as the
        settlement of the request's quota reservation) and observe the metrics."""
        self.platform.settle_and_record(
            request.request_id if request else (caller.request_id or uuid.uuid4().hex), chars=chars,
            tokens=prompt_tokens + completion_tokens, reserved=settle_quota,
            content=_content(caller, request, outputs),
            account_id=caller.principal.account_id, credential_id=caller.principal.credential_id,
            service_id=caller.service_id, model=model, dialect=caller.dialect, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, generated_chars=chars,
            n=request.sampling.n if request else 1, status=status,
            ttft_ms=None if ttft is None else int(ttft * 1000),
            latency_ms=None if latency is None else int(latency * 1000), user=caller.user)
        tpot = None
        if ttft is not None and latency is not None and completion_tokens > 1:
            tpot = (latency - ttft) / max(1, completion_tokens - 1)
        self.metrics.observe_request(caller.dialect, status, prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens, ttft=ttft, tpot=tpot,
                                     latency=latency)

    def _account_values(self, p: Principal) -> tuple:
        """The account's (rpm, tpm, qps, max_concurrency), each its own or the default."""
        d = self.default_limits

        def pick(own, default):
            return default if own is None else own
        return (pick(p.account_rpm, d.rpm), pick(p.account_tpm, d.tpm), pick(p.account_qps, d.qps),
                pick(p.account_max_concurrency, d.max_concurrency))

    def _scope_values(self, caller: Caller) -> list[tuple[str, str, tuple]]:
        p = caller.principal
        return [(f"account:{p.account_id}", "account", self._account_values(p)),
                (f"cred:{p.credential_id}", "credential",
                 (p.credential_rpm, p.credential_tpm, p.credential_qps, p.credential_max_concurrency)),
                (f"service:{caller.service_id}", "service", (*caller.service_limits, None, None))]

    def _scopes(self, caller: Caller) -> list[tuple[str, Limits]]:
        """The limiter's scopes; RateLimited at once where a limit is 0 (nothing allowed)."""
        scopes = []
        for scope, what, values in self._scope_values(caller):
            lim = _limits(*values, scope=what)
            if lim is not None:
                scopes.append((scope, lim))
        return scopes

    def effective_limits(self, caller: Caller) -> tuple[float | None, float | None]:
        """(rpm, tpm) that bind this caller: the smallest over its scopes, 0 where one allows
        nothing, None where none has one (for headers such as Qianfan's
        X-Ratelimit-Limit-Requests / -Tokens). Never raises."""
        values = [v for _, _, v in self._scope_values(caller)]
        rpms = [v[0] for v in values if v[0] is not None]
        tpms = [v[1] for v in values if v[1] is not None]
        return (min(rpms) if rpms else None, min(tpms) if tpms else None)
