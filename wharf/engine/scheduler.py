"""Continuous batching: fair admission, chunked fill, batched decode, preemption,
cancellation.

One thread owns the model. Each iteration it drops cancelled or timed-out requests,
shares the KV slots between the requests that want them, then runs one forward pass
that decodes every sequence whose slot is ready and fills slots with up to a bounded
budget of prompt tokens. Requests join and leave the batch at any step.

Sharing is max-min fair, first between tenants (an opaque key the caller sets: Wharf's
pipeline uses the account), then between a tenant's requests, in arrival order. A
request never holds more than its share while another waits: what it holds over its
share it gives back by preemption, and the preempted sequence later recomputes its KV
(as vLLM's recompute preemption) and goes on where it stopped. With one tenant and
n = 1 requests this is first come, first served, and nothing is ever preempted.

A sequence is its `token_ids` (prompt + output so far) and, while it holds a slot, the
KV of its first `kv` positions. New and preempted sequences enter the same way: their
slot is filled with the KV of all their tokens, by copying from a sibling choice that
shares the prompt, from the prefix cache, or by prefill in chunks of the step's budget
(so a long prompt never stalls running streams for long; the chunks ride in the same
pass as the decodes), and their next token is sampled from the last logits. From then
on kv == len(token_ids) - 1 and each decode step feeds the last token and samples the next, batched with everyone else.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

import torch

from wharf.engine.fair_share import fair_shares
from wharf.engine.output import OutputProcessor
from wharf.engine.penalties import PenaltyState
from wharf.engine.prefix_cache import PrefixCache
from wharf.engine.runners.base import Fill, ModelRunner
from wharf.engine.sampling import sample
from wharf.engine.sequence import Group, Sequence
from wharf.engine.types import EngineStats, FinishReason
from wharf.errors import Internal, InvalidParam, Overloaded, Timeout, WharfError

log = logging.getLogger("wharf.engine")


def default_decode_threads() -> int:
    """Every core. (Leaving one to the event loop looked faster only while the main
    thread owned an OpenMP team of its own: see keep_this_thread_single_threaded.)"""
    return os.cpu_count() or 1


class Scheduler:
    def __init__(self, runner: ModelRunner, tokenizer, *, eos_ids: set[int], max_queue: int,
                 prefill_chunk: int, prefill_threads: int | None = None, decode_threads: int | None = None,
                 prefix_cache_bytes: int = 0):
        """prefill_threads / decode_threads (default: every core / default_decode_threads()):
        torch threads of the model thread while slots are filled / for a decode step."""
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
        self.waiting: collections.deque[Group] = collections.deque()   # submitted, never placed
        self.active: list[Group] = []                                   # placed at least once, by arrival
        self.filling: list[Sequence] = []                               # hold a slot, not yet decoding
        self.cond = threading.Condition()
        self.stopping = False
        self.generated_tokens = 0
        self.preemptions = 0
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_tokens = 0
        self.penalties = PenaltyState(runner.max_slots, runner.vocab_size)
        self.output = OutputProcessor(tokenizer, eos_ids)
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
        active = list(self.active)
        return EngineStats(waiting=len(self.waiting) + sum(1 for g in active if not g.held),
                           running=sum(1 for g in active for s in g.seqs if s.slot >= 0),
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
        self._tune()
        while True:
            with self.cond:
                while not (self.stopping or self.waiting or self.active):
                    self.cond.wait()
                if self.stopping:
                    self._fail_all(Overloaded("the engine is shutting down"))
                    return
            try:
                self._reap()
                self._share_slots()
                self._step()
            except Exception as exc:  # a bug must not kill the engine for everyone
                log.exception("engine step failed")
                self._fail_all(Internal(f"engine failure: {type(exc).__name__}"))

    def _tune(self) -> None:
        """The runner's measurements of this CPU (runner.tune, optional), before the first
        step and on this thread: its torch threads are the ones the steps run with."""
        tune = getattr(self.runner, "tune", None)
        if tune is None:
            return
        try:
            log.info(tune())
        except Exception:  # the runner keeps its defaults: slower, not wrong
            log.exception("tuning the runner failed; it keeps its defaults")

    def _fail_all(self, error: WharfError) -> None:
        with self.cond:
            groups = list(self.waiting) + self.active
            self.waiting.clear()
        self.active, self.filling = [], []
        for g in groups:
            self._finish_group(g, error)

    def _release(self, seq: Sequence) -> None:
        if seq.slot >= 0:
            self.runner.release(seq.slot)
            self.free_slots.append(seq.slot)
            seq.slot, seq.kv, seq.filled = -1, 0, False
        if seq in self.filling:
            self.filling.remove(seq)

    def _finish_group(self, group: Group, error: WharfError | None = None) -> None:
        for seq in group.seqs:
            self._release(seq)
        self.free_slots.sort()
        if group in self.active:
            self.active.remove(group)
        group.done = True
        if error is not None:
            group.emit(error)
        group.emit(None)

    def _fail_group(self, group: Group, exc: Exception) -> None:
        """An error inside one request's work ends that request alone."""
        log.error("request %s failed in the engine", group.request_id, exc_info=exc)
        for seq in group.seqs:
            seq.finish = seq.finish or FinishReason.ERROR
        self._finish_group(group, Internal(f"engine failure in this request: {type(exc).__name__}"))

    def _reap(self) -> None:
        now = time.monotonic()
        with self.cond:
            expired = [g for g in self.waiting if g.cancelled or (g.deadline and now > g.deadline)]
            for g in expired:
                self.waiting.remove(g)
        for g in expired:
            self._finish_group(g, Timeout("request timed out in the queue") if not g.cancelled else None)
        for g in [g for g in self.active if g.cancelled or (g.deadline and now > g.deadline)]:
            self._finish_group(g, None if g.cancelled else Timeout("request timed out"))

    # -- who holds which slot ---------------------------------------------------------------
    def _share_slots(self) -> None:
        with self.cond:
            groups = self.active + list(self.waiting)
        if not groups:
            return
        shares = fair_shares(groups, self.runner.max_slots)
        # Give back what is held over a share while another request is under its own and
        # there are not enough free slots for it.
        short = sum(max(0, shares[g] - g.held) for g in groups) - len(self.free_slots)
        if short > 0:
            for g in sorted(groups, key=lambda g: shares[g] - g.held):
                while short > 0 and g.held > shares[g]:
                    victims = [s for s in g.seqs if s.decoding]
                    if not victims:
                        break
                    self._preempt(min(victims, key=lambda s: (s.output_len, -s.index)))
                    short -= 1
        # Then fill free slots, the requests furthest under their share first.
        for g in sorted(groups, key=lambda g: (g.held - shares[g], g.arrival)):
            while self.free_slots and g.held < shares[g]:
                seq = next(s for s in g.seqs if s.finish is None and s.slot < 0)
                self._place(seq)

    def _preempt(self, seq: Sequence) -> None:
        """Free the slot; the sequence keeps its tokens and recomputes its KV later."""
        self.preemptions += 1
        self._release(seq)
        self.free_slots.sort()

    def _place(self, seq: Sequence) -> None:
        group = seq.group
        if group not in self.active:
            with self.cond:
                self.waiting.remove(group)
            self.active.append(group)
            self.active.sort(key=lambda g: g.arrival)
        seq.slot, seq.kv = self.free_slots.pop(0), 0
        self.filling.append(seq)

    # -- one step: decode every ready sequence, fill slots within the budget ------------------
    def _step(self) -> None:
        """Decode first: every sequence whose slot is ready feeds its last token. Slots being
        filled get up to `prefill_chunk` tokens of this step, and both go through the model
        in one pass (as vLLM's chunked prefill), so a prompt arriving costs the running
        streams one longer step, not a step of its own per chunk."""
        decoding = sorted((s for g in self.active for s in g.seqs if s.decoding), key=lambda s: s.slot)
        filling = self._plan_fills()
        if not decoding and not filling:
            return
        fills = [Fill(seq.slot, seq.token_ids[seq.kv:seq.kv + took], seq.kv,
                      logits=seq.kv + took == len(seq.token_ids)) for seq, took in filling if took]
        slots = [s.slot for s in decoding]
        tokens, positions = [s.token_ids[-1] for s in decoding], [len(s.token_ids) - 1 for s in decoding]
        torch.set_num_threads(self.prefill_threads if fills else self.decode_threads)
        try:
            decode_logits, fill_logits = self._forward(slots, tokens, positions, filling, fills)
        finally:
            torch.set_num_threads(self.decode_threads)
        for seq in decoding:
            seq.kv += 1
        ready, rows = list(decoding), [decode_logits] if decoding else []
        results = iter(fill_logits)
        for seq, took in filling:
            logits = next(results) if took else None
            if seq.group.done:            # its fill failed (or a sibling's did)
                continue
            try:
                logits = self._after_fill(seq, took, logits)
            except Exception as exc:
                self._fail_group(seq.group, exc)
                continue
            if logits is not None:
                ready.append(seq)
                rows.append(logits.unsqueeze(0))
        if ready:
            self._sample_and_emit(ready, rows[0] if len(rows) == 1 else torch.cat(rows))

    def _forward(self, slots, tokens, positions, filling, fills):
        """runner.step; when it raises, each fill is retried alone so that a request whose
        tokens break the model fails alone, and the decode rows run once more without them."""
        try:
            return self.runner.step(slots, tokens, positions, fills)
        except Exception:
            if not fills:
                raise                     # the decode rows alone: the engine's failure
        fill_logits, owners = [], [seq for seq, took in filling if took]
        for seq, fill in zip(owners, fills):
            try:
                fill_logits.append(self.runner.step([], [], [], [fill])[1][0])
            except Exception as exc:
                self._fail_group(seq.group, exc)
                fill_logits.append(None)
        decode_logits = self.runner.step(slots, tokens, positions, [])[0] if slots else None
        return decode_logits, fill_logits

    def _plan_fills(self) -> list[tuple[Sequence, int]]:
        """The filling sequences this step works on, and how many tokens each computes
        (0: its slot was completed by copying, or it waits for a sibling)."""
        plan, budget = [], self.prefill_chunk
        for seq in list(self.filling):
            if budget <= 0:
                break
            if seq.group.done or seq not in self.filling:
                continue
            try:
                took = self._reuse_kv(seq, budget)
            except Exception as exc:
                self._fail_group(seq.group, exc)
                continue
            if took is not None:
                plan.append((seq, took))
                budget -= took
        return plan

    def _reuse_kv(self, seq: Sequence, budget: int) -> int | None:
        """Bring the slot's KV as far as copying allows (a sibling choice holding the prompt,
        or the prefix cache); returns the tokens left to compute this step, None to wait."""
        group, target, prompt_len = seq.group, len(seq.token_ids), seq.group.prompt_len
        if seq.kv < prompt_len:
            ahead = self.filling[:self.filling.index(seq)]
            if any(s.group is group and s.kv < prompt_len for s in ahead):
                return None       # a sibling ahead is computing the prompt: copy it when done
            # A sibling choice holding the prompt: copy it rather than compute it again (all
            # of it only when the prompt's last logits are kept to sample from).
            donor = max((s for s in group.seqs if s is not seq and s.slot >= 0), key=lambda s: s.kv,
                        default=None)
            copy = min(donor.kv, prompt_len) if donor is not None else 0
            if copy == target and group.prompt_logits is None:
                copy -= 1
            if copy > seq.kv:
                seq.kv = copy
                self.runner.copy_slot(donor.slot, seq.slot, copy)
            elif seq.kv == 0 and self.prefix_cache is not None:
                blocks = self.prefix_cache.lookup(group.tenant, group.prompt_ids)
                if blocks:
                    seq.kv = self.runner.import_prefix(seq.slot, blocks)
        return min(budget, target - seq.kv)

    def _after_fill(self, seq: Sequence, took: int, logits: torch.Tensor | None) -> torch.Tensor | None:
        """Account for the tokens this step computed; once the slot holds them all, the
        logits to sample the sequence's next token from (a first token costs no extra
        decode step), else None."""
        group, prompt_len = seq.group, seq.group.prompt_len
        seq.kv += took
        if seq.kv >= prompt_len and not group.cached and self.prefix_cache is not None:
            group.cached = True
            slot = seq.slot
            self.prefix_cache.store(group.tenant, group.prompt_ids,
                                    lambda start, end: self.runner.export_prefix(slot, start, end))
        if seq.kv < len(seq.token_ids):
            return None
        if logits is None:                  # the whole prompt was copied from a sibling
            logits = group.prompt_logits
        elif len(seq.token_ids) == prompt_len and group.params.n > 1:
            group.prompt_logits = logits    # for the other choices, which copy the prompt
        self.filling.remove(seq)
        seq.filled = True
        if seq.needs_penalties:             # rebuilt from the tokens: the slot may be a new one
            self.penalties.reset(seq.slot, seq.token_ids, prompt_len)
        return logits

    # -- sampling -------------------------------------------------------------------------------
    def _sample(self, seqs: list[Sequence], logits: torch.Tensor):
        if any(s.needs_penalties for s in seqs):
            logits = self.penalties.apply(logits, [s.row for s in seqs], [s.slot for s in seqs])
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
                    self.penalties.record(seq.slot, token)
                self.output.advance(seq, token, lp)
            except Exception as exc:
                self._fail_group(seq.group, exc)
                continue
            if seq.finish is not None:
                self._release(seq)      # a finished choice frees its slot for others at once
        self.free_slots.sort()
        for group in {s.group for s in seqs}:
            if not group.done and all(s.finish is not None for s in group.seqs):
                self._finish_group(group)


    def _count_tokens(self, n: int) -> None:
        self.generated_tokens += n
        self._rate_tokens += n
        now = time.monotonic()
        if now - self._rate_at >= 1.0:
            self._rate = self._rate_tokens / (now - self._rate_at)
            self._rate_at, self._rate_tokens = now, 0
