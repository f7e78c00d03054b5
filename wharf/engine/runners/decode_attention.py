"""Decode attention for the CPU runner: one new token per slot, over that slot's cache.

torch offers three ways, and which is fastest depends on the CPU and on how many slots
decode together (bench/README.md):
- "grouped": SDPA with the query heads that share a KV head as that head's query rows
  ([b, kv_heads, group, D]), so nothing repeats K/V;
- "gqa": SDPA with one query row per head and enable_gqa ([b, heads, 1, D]);
- "matmul": two batched matmuls straight over the cache's allocated positions of a range
  of slots, in place (gaps and positions past each sequence masked), softmax in float32;
  only for many slots close together in a cache not much longer than the longest one.
On 2-core Zen 4/5 EPYCs "grouped" was 3x faster than "gqa" at a few slots and "matmul"
beat SDPA by 30 % at 128; on an AMX Xeon "gqa" is the fastest at every count (25 % ahead
of "grouped" at 128 slots) and "matmul" 1.6-4x slower than both. So the runner measures
them once, on the model thread, on a cache of its own shape (`measure`), and keeps a
ranking for many slots (`Plan`); below MANY_FROM slots "grouped" stays (see measure).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# (q [b, heads, D], one layer's k_cache, v_cache [slots, kv_heads, capacity, D]) -> [b, heads * D]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

MANY_FROM = 16          # slots in a step from which the "many" ranking applies (and "matmul" may)
KEEP_UNLESS = 1.10      # the default kind stays first unless another is this much faster


@dataclass(frozen=True)
class Geometry:
    kv_heads: int
    group: int          # query heads per KV head
    dim: int
    dtype: torch.dtype

    @property
    def scale(self) -> float:
        return self.dim ** -0.5


@dataclass(frozen=True)
class Plan:
    """The kinds to use, fastest first, below and from MANY_FROM slots; the first that
    applies is taken ("matmul" applies only where `matmul_fits`)."""

    few: tuple[str, ...] = ("grouped",)
    many: tuple[str, ...] = ("matmul", "grouped")
    times_ms: tuple[tuple[str, float], ...] = ()     # what `measure` saw, for the log

    def pick(self, slots: list[int], positions: list[int], capacity: int) -> str:
        ranking = self.many if len(slots) >= MANY_FROM else self.few
        return next(k for k in ranking if k != "matmul" or matmul_fits(slots, positions, capacity))

    def describe(self) -> str:
        seen = ", ".join(f"{name} {ms:.3f} ms" for name, ms in self.times_ms)
        return f"decode attention: {self.few[0]} below {MANY_FROM} slots, {'/'.join(self.many)} from it ({seen})"


DEFAULT = Plan()


def matmul_fits(slots: list[int], positions: list[int], capacity: int) -> bool:
    """Many slots close together, and a cache allocation at most 7/4 of the longest
    sequence: the positions "matmul" reads past the sequences stay few."""
    width = max(slots) - min(slots) + 1
    return len(slots) >= MANY_FROM and 4 * width <= 5 * len(slots) and 4 * capacity <= 7 * (max(positions) + 1)


def build(kind: str, geo: Geometry, slots: list[int], positions: list[int], capacity: int) -> Attend:
    """The attention of one decode step, as a function of each layer's q and caches."""
    if kind == "matmul":
        return _in_place(geo, slots, positions, capacity)
    return _sdpa(geo, slots, positions, gqa=kind == "gqa")


def _sdpa(geo: Geometry, slots: list[int], positions: list[int], gqa: bool) -> Attend:
    """One SDPA call over the longest sequence's positions. Slots out of cache order are
    read as the range of slots they span, where it is at most twice as many (a slot of
    the range that is not decoding gets a zero query that sees position 0 alone, its row
    dropped): gathering their caches copies them, 3.3-3.7 against 1.6 ms a layer for 120
    of 128 slots of 170 positions (AMX Xeon, bench/README.md)."""
    b, span, lo = len(slots), max(positions) + 1, min(slots)
    width = max(slots) - lo + 1
    where = None                                         # rows of the range: the slots' places in it
    if slots == list(range(lo, lo + b)):
        rows = slice(lo, lo + b)
    elif width <= 2 * b:
        rows, where = slice(lo, lo + width), torch.tensor(slots) - lo
        positions = torch.zeros(width, dtype=torch.long).index_copy_(0, where, torch.tensor(positions)).tolist()
    else:
        rows = torch.tensor(slots)                       # index_select: a copy of their caches
    n = len(positions)
    past = torch.arange(span).unsqueeze(0) > torch.tensor(positions).unsqueeze(1)
    # Additive, in the model's dtype: SDPA would convert a boolean mask in every layer.
    mask = torch.zeros(past.shape, dtype=geo.dtype).masked_fill_(past, float("-inf"))[:, None, None, :]
    shape = (n, geo.kv_heads * geo.group, 1, geo.dim) if gqa else (n, geo.kv_heads, geo.group, geo.dim)

    def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        if where is not None:
            q = q.new_zeros(n, *q.shape[1:]).index_copy_(0, where, q)
        out = F.scaled_dot_product_attention(q.reshape(shape), k_cache[rows, :, :span], v_cache[rows, :, :span],
                                             attn_mask=mask, enable_gqa=gqa).reshape(n, -1)
        return out if where is None else out[where]
    return attend


def _in_place(geo: Geometry, slots: list[int], positions: list[int], capacity: int) -> Attend:
    """Batched matmuls over cache slots lo..lo+width-1; a slot of the range that is not
    decoding gets a zero query at position 0, its row dropped; the rows come back in the
    order of `slots`. A copy of a cache view costs more than reading past positions."""
    n_kv, group, dim, cap = geo.kv_heads, geo.group, geo.dim, capacity
    lo = min(slots)
    width = max(slots) - lo + 1
    in_cache_order = slots == list(range(lo, lo + width))
    where = torch.tensor(slots) - lo
    pos = torch.zeros(width, dtype=torch.long).index_copy_(0, where, torch.tensor(positions))
    mask = torch.zeros(width, 1, 1, cap).masked_fill_(torch.arange(cap) > pos[:, None, None, None], float("-inf"))

    def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        if not in_cache_order:
            q = q.new_zeros(width, *q.shape[1:]).index_copy_(0, where, q)
        keys = k_cache[lo:lo + width].view(width * n_kv, cap, dim)
        values = v_cache[lo:lo + width].view(width * n_kv, cap, dim)
        scores = torch.bmm(q.reshape(width * n_kv, group, dim), keys.transpose(1, 2))
        scores = torch.add(mask, scores.view(width, n_kv, group, cap).float(), alpha=geo.scale)
        probs = torch.softmax(scores, dim=-1).to(q.dtype).view(width * n_kv, group, cap)
        out = torch.bmm(probs, values).view(width, -1)
        return out if in_cache_order else out[where]
    return attend


@functools.cache
def measure(geo: Geometry, threads: int, layers: int = 8, rounds: int = 5) -> Plan:
    """Rank the kinds on this CPU with `threads` torch threads (the caller's), at 4 and at
    64 slots of 192 positions in a 256-position allocation: each kind attends over the
    caches of `layers` layers in turn (100 MB in bf16 at 64 slots, as a step's caches and
    weights are not all in the CPU's cache: with 4 layers the kinds' gaps were half as
    wide on the AMX Xeon), the kinds alternating, best of `rounds`. 0.4-0.5 s there, once per
    geometry and thread count in a process."""
    del threads                                   # part of the cache key only
    times: dict[tuple[str, str], float] = {}
    # Below MANY_FROM slots "grouped" stays: the kinds round bf16 differently, and a ranking
    # measured per process would give a single stream other greedy tokens from one start to
    # the next (tests/scale/test_upstream.py's usage test saw an early EOS); the two were
    # within 10 % at 4 slots on the AMX Xeon anyway.
    for regime, slots, kinds in (("few", 4, ("grouped",)), ("many", 64, ("grouped", "gqa", "matmul"))):
        capacity, span = 256, 192
        shape = (layers, slots, geo.kv_heads, capacity, geo.dim)
        k_cache, v_cache = torch.randn(shape, dtype=geo.dtype), torch.randn(shape, dtype=geo.dtype)
        q = torch.randn(slots, geo.kv_heads * geo.group, geo.dim, dtype=geo.dtype)
        ids, positions = list(range(slots)), [span - 1 - (i % 32) for i in range(slots)]
        steps = {kind: build(kind, geo, ids, positions, capacity) for kind in kinds}
        for _ in range(rounds):
            for kind, attend in steps.items():
                t0 = time.perf_counter()
                for layer in range(layers):
                    attend(q, k_cache[layer], v_cache[layer])
                ms = (time.perf_counter() - t0) * 1000 / layers
                times[regime, kind] = min(ms, times.get((regime, kind), ms))
        del k_cache, v_cache

    def ranking(regime: str, default: str) -> tuple[str, ...]:
        ranked = sorted((kind for r, kind in times if r == regime), key=lambda kind: times[regime, kind])
        if times[regime, default] <= KEEP_UNLESS * times[regime, ranked[0]]:
            ranked.remove(default)
            ranked.insert(0, default)
        return tuple(ranked)

    seen = tuple((f"{kind}@{4 if regime == 'few' else 64}", ms) for (regime, kind), ms in times.items())
    return Plan(few=ranking("few", DEFAULT.few[0]), many=ranking("many", DEFAULT.many[0]), times_ms=seen)
