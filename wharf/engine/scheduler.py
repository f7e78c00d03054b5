"""Continuous batching: admission, chunked prefill, batched decode, cancellation.

One thread owns the model. Each iteration it drops cancelled or timed-out
requests, admits waiting ones while KV slots are free, spends a bounded token
budget on prefill (so a long prompt never stalls running streams for long), then
runs one decode step for every running sequence. Requests join and leave the
batch at any step.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from wharf.engine.backends.base import ModelRunner
from wharf.engine.prefix_cache import PrefixCache
from wharf.engine.detokenize import IncrementalDetokenizer, StopMatcher
from wharf.engine.sampling import SamplerRow, apply_penalties, make_generator, sample
from wharf.engine.types import Chunk, EngineStats, FinishReason, SamplingParams, TokenLogprob
from wharf.errors import Internal, InvalidParam, Overloaded, Timeout, WharfError

log = logging.getLogger("wharf.engine")


@dataclass(eq=False)
class Sequence:
    group: "Group"
    index: int
    row: SamplerRow
    detok: IncrementalDetokenizer
    stops: StopMatcher
    token_ids: list[int]
    slot: int = -1
    finish: FinishReason | None = None
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def output_len(self) -> int:
        return len(self.token_ids) - self.group.prompt_len

    @property
    def needs_penalties(self) -> bool:
        p = self.row.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


@dataclass(eq=False)
class Group:
    """One request: n sequences that share the prompt's prefill."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    emit: Callable[[object], None]     # thread-safe; receives Chunk, WharfError, or None at the end
    deadline: float | None = None
    seqs: list[Sequence] = field(default_factory=list)
    prefilled: int = 0
    cancelled: bool = False
    done: bool = False
    first_token_at: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


def default_decode_threads() -> int:
    """Every core. (Leaving one to the event loop looked faster only while the main
    thread owned an OpenMP team of its own: see keep_this_thread_single_threaded.)"""
    return os.cpu_count() or 1


class Scheduler:
    def __init__(self, runner: ModelRunner, tokenizer, *, eos_ids: set[int], max_queue: int,
                 prefill_chunk: int, prefill_threads: int | None = None, decode_threads: int | None = None,
                 prefix_cache_bytes: int = 0):
        """prefill_threads / decode_threads (default: every core / default_decode_threads()):
        torch threads of the model thread while a prompt is prefilled / for a decode step."""
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefill_threads = prefill_threads or os.cpu_count() or 1
        self.prefix_cache = (PrefixCache(prefix_cache_bytes)
                             if prefix_cache_bytes > 0 and hasattr(runner, "export_prefix") else None)
        self.decode_threads = decode_threads or default_decode_threads()
        self.free_slots = list(range(runner.max_slots))
        self.waiting: collections.deque[Group] = collections.deque()
        self.prefilling: list[Group] = []
        self.running: list[Group] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.generated_tokens = 0
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_tokens = 0
        vocab = runner.vocab_size
        self.seen = torch.zeros(runner.max_slots, vocab, dtype=torch.bool)
        self.counts = torch.zeros(runner.max_slots, vocab, dtype=torch.int32)
        self._token_text: dict[int, str] = {}
        self.thread = threading.Thread(target=self._loop, name="wharf-scheduler", daemon=True)
        self.thread.start()

    # -- called from the event loop ---------------------------------------------------
    def submit(self, group: Group) -> None:
        if group.params.n > self.runner.max_slots:
            raise InvalidParam(f"n must be at most {self.runner.max_slots} on this server", param="n")
        with self.cond:
            if self.stopping:
                raise Overloaded("the engine is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise Overloaded("the engine's queue is full; retry shortly")
            self.waiting.append(group)
            self.cond.notify()

    def abort(self, group: Group) -> None:
        with self.cond:
            group.cancelled = True
            self.cond.notify()

    def stats(self) -> EngineStats:
        prefix = self.prefix_cache.stats if self.prefix_cache is not None else None
        return EngineStats(waiting=len(self.waiting) + len(self.prefilling),
                           running=sum(1 for g in self.running for s in g.seqs if s.finish is None),
                           max_batch_size=self.runner.max_slots,
                           generated_tokens=self.generated_tokens,
                           tokens_per_second=round(self._rate, 1),
                           prefix_cache_hits=prefix.hits if prefix else 0,
                           prefix_cache_tokens=prefix.reused_tokens if prefix else 0)

    def shutdown(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=5)

    # -- the model thread -----------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.decode_threads)
        while True:
            with self.cond:
                while not (self.stopping or self.waiting or self.prefilling or self.running):
                    self.cond.wait()
                if self.stopping:
                    self._fail_all(Overloaded("the engine is shutting down"))
                    return
            try:
                self._reap()
                self._admit()
                self._prefill_step()
                self._decode_step()
            except Exception as exc:  # a bug must not kill the engine for everyone
                log.exception("engine step failed")
                self._fail_all(Internal(f"engine failure: {type(exc).__name__}"))

    def _fail_all(self, error: WharfError) -> None:
        with self.cond:
            groups = list(self.waiting) + self.prefilling + self.running
            self.waiting.clear()
        self.prefilling, self.running = [], []
        for g in groups:
            self._finish_group(g, error)

    def _finish_group(self, group: Group, error: WharfError | None = None) -> None:
        for seq in group.seqs:
            if seq.slot >= 0:
                self.runner.release(seq.slot)
                self.free_slots.append(seq.slot)
                seq.slot = -1
        self.free_slots.sort()
        group.done = True
        if error is not None:
            group.emit(error)
        group.emit(None)

    def _reap(self) -> None:
        now = time.monotonic()
        with self.cond:
            expired = [g for g in self.waiting if g.cancelled or (g.deadline and now > g.deadline)]
            for g in expired:
                self.waiting.remove(g)
        for g in expired:
            self._finish_group(g, Timeout("request timed out in the queue") if not g.cancelled else None)
        for bucket in (self.prefilling, self.running):
            for g in [g for g in bucket if g.cancelled or (g.deadline and now > g.deadline)]:
                bucket.remove(g)
                self._finish_group(g, None if g.cancelled else Timeout("request timed out"))

    def _admit(self) -> None:
        admitted = []
        with self.cond:
            while self.waiting and len(self.free_slots) >= self.waiting[0].params.n:
                group = self.waiting.popleft()
                for seq in group.seqs:
                    seq.slot = self.free_slots.pop(0)
                admitted.append(group)
        for group in admitted:
            if self.prefix_cache is not None:
                blocks = self.prefix_cache.lookup(group.prompt_ids)
                if blocks:
                    group.prefilled = self.runner.import_prefix(group.seqs[0].slot, blocks)
            self.prefilling.append(group)

    def _prefill_step(self) -> None:
        if not self.prefilling:
            return
        torch.set_num_threads(self.prefill_threads)
        try:
            self._prefill_chunks()
        finally:
            torch.set_num_threads(self.decode_threads)

    def _prefill_chunks(self) -> None:
        budget = self.prefill_chunk
        for group in list(self.prefilling):
            if budget <= 0:
                break
            try:
                budget -= self._prefill_group(group, budget)
            except Exception as exc:
                self._fail_group(group, exc)

    def _prefill_group(self, group: Group, budget: int) -> int:
        """Prefill up to `budget` of the group's prompt tokens; returns how many it took."""
        take = min(budget, group.prompt_len - group.prefilled)
        chunk = group.prompt_ids[group.prefilled:group.prefilled + take]
        lead = group.seqs[0]
        logits = self.runner.prefill(lead.slot, chunk, group.prefilled)
        group.prefilled += take
        if group.prefilled < group.prompt_len:
            return take
        for seq in group.seqs[1:]:
            self.runner.copy_slot(lead.slot, seq.slot, group.prompt_len)
        for seq in group.seqs:
            if seq.needs_penalties:
                self.seen[seq.slot].zero_()
                self.seen[seq.slot, group.prompt_ids] = True
                self.counts[seq.slot].zero_()
        if self.prefix_cache is not None:
            self.prefix_cache.store(group.prompt_ids,
                                    lambda start, end: self.runner.export_prefix(lead.slot, start, end))
        self.prefilling.remove(group)
        self.running.append(group)
        group.first_token_at = time.monotonic()
        self._sample_and_emit(group.seqs, logits.unsqueeze(0).expand(len(group.seqs), -1))
        return take

    def _decode_step(self) -> None:
        seqs = sorted((s for g in self.running for s in g.seqs if s.finish is None),
                      key=lambda s: s.slot)
        if not seqs:
            return
        logits = self.runner.decode([s.slot for s in seqs], [s.token_ids[-1] for s in seqs],
                                    [len(s.token_ids) - 1 for s in seqs])
        self._sample_and_emit(seqs, logits)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor):
        if any(s.needs_penalties for s in seqs):
            slots = torch.tensor([s.slot for s in seqs])
            logits = apply_penalties(logits, [s.row for s in seqs], self.seen[slots], self.counts[slots])
        return sample(logits, [s.row for s in seqs])

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        try:
            result = self._sample(seqs, logits)
            picks = list(zip(seqs, result.tokens, result.logprobs))
        except Exception:
            # One row's numbers (a NaN, an infinity) fail the batched call for all: sample
            # row by row so only the requests at fault fail and the rest go on.
            picks = []
            for i, seq in enumerate(seqs):
                if seq.group.done:
                    continue
                try:
                    one = self._sample([seq], logits[i:i + 1])
                    picks.append((seq, one.tokens[0], one.logprobs[0]))
                except Exception as exc:
                    self._fail_group(seq.group, exc)
        self._count_tokens(len(picks))
        for seq, token, lp in picks:
            if seq.group.done:       # failed through another of its n choices
                continue
            try:
                if seq.needs_penalties:
                    self.seen[seq.slot, token] = True
                    self.counts[seq.slot, token] += 1
                self._advance(seq, token, lp)
            except Exception as exc:
                self._fail_group(seq.group, exc)
        for group in {s.group for s in seqs}:
            if not group.done and all(s.finish is not None for s in group.seqs):
                self.running.remove(group)
                self._finish_group(group)

    def _fail_group(self, group: Group, exc: Exception) -> None:
        """An error inside one request's work ends that request alone."""
        log.error("request %s failed in the engine", group.request_id, exc_info=exc)
        for seq in group.seqs:
            seq.finish = seq.finish or FinishReason.ERROR
        for bucket in (self.prefilling, self.running):
            if group in bucket:
                bucket.remove(group)
        self._finish_group(group, Internal(f"engine failure in this request: {type(exc).__name__}"))

    def _advance(self, seq: Sequence, token: int, lp) -> None:
        group, params = seq.group, seq.row.params
        seq.token_ids.append(token)
        seq.pending_ids.append(token)
        if lp is not None:
            seq.pending_logprobs.append(TokenLogprob(
                token=self._text_of(token), token_id=token, logprob=lp[0],
                top=[(self._text_of(t), t, v) for t, v in lp[1]]))
        text = ""
        is_eos = (token in self.eos_ids and not params.ignore_eos) or token in params.stop_token_ids
        if is_eos:
            seq.finish = FinishReason.STOP
        else:
            text = seq.stops.feed(seq.detok.push(token))
            if seq.stops.stopped:
                seq.finish = FinishReason.STOP
            elif seq.output_len >= group.max_tokens:
                seq.finish = FinishReason.LENGTH
        if seq.finish is FinishReason.LENGTH or (is_eos and not seq.stops.stopped):
            text += seq.stops.feed(seq.detok.flush())
            text += seq.stops.flush()
        if text or seq.finish is not None:
            group.emit(Chunk(index=seq.index, text=text, token_ids=seq.pending_ids,
                             logprobs=seq.pending_logprobs if params.logprobs is not None else None,
                             finish_reason=seq.finish, prompt_tokens=group.prompt_len,
                             completion_tokens=seq.output_len))
            seq.pending_ids, seq.pending_logprobs = [], []

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def _count_tokens(self, n: int) -> None:
        self.generated_tokens += n
        self._rate_tokens += n
        now = time.monotonic()
        if now - self._rate_at >= 1.0:
            self._rate = self._rate_tokens / (now - self._rate_at)
            self._rate_at, self._rate_tokens = now, 0
