"""Rate limits: RPM, TPM and QPS token buckets plus a max-concurrency gate.

Limits are keyed by arbitrary scope strings ("account:3", "cred:7",
"service:2"). One call checks every bucket of every scope and either takes
from all of them or takes nothing and raises RateLimited::

    limiter = make_limiter(settings.redis_url)           # None -> in-process
    lease = limiter.acquire([("account:3", Limits(rpm=60, tpm=10_000)),
                             ("service:2", Limits(qps=5, max_concurrency=8))],
                            tokens=prompt_tokens + max_tokens)
    with lease:                                          # releases the concurrency slot
        ...generate...
        lease.adjust_tokens(prompt_tokens + completion_tokens)   # settle TPM

Async code uses the same objects with `await limiter.aacquire(...)`,
`await lease.aadjust_tokens(n)`, `await lease.arelease()` or
`async with lease:`. The Redis backend runs its (sub-millisecond) sync calls
in a worker thread via asyncio.to_thread, so one client and connection pool
serve both worlds and nothing is bound to a particular event loop; the memory
backend never blocks and runs inline.

Bucket semantics
- rpm: capacity rpm, refills rpm/60 per second; each request costs 1.
- qps: capacity qps, refills qps per second; each request costs 1.
- tpm: capacity tpm, refills tpm/60 per second; a request costs `tokens`
  (reserve prompt + max_tokens up front, then `adjust_tokens(actual)` refunds
  or charges the difference; the bucket may go into debt).
- A cost larger than the capacity is admitted when the bucket is full and
  leaves it in debt, so one huge request is possible but is paid for.
- max_concurrency: at most that many unreleased leases per scope. Each lease
  also carries an expiry (lease_ttl, default 15 min; `lease.refresh()` extends
  it) so a slot held by a crashed process frees itself.
- On refusal, RateLimited.reason is the first failing check in the order
  scopes were given, and within a scope concurrency, qps, rpm, tpm;
  retry_after is the longest wait among the failing buckets (a full
  concurrency gate counts as `concurrency_retry_after`, 1 s by default).
  The exception also carries `.scope`.

Backends
- MemoryLimiter: one process, thread-safe (one lock).
- RedisLimiter(url): several gateway processes share one budget. Each
  operation is one atomic Lua script (register_script). Buckets are hashes
  {l: level, t: timestamp} with a TTL of the time they take to refill;
  concurrency gates are sorted sets of lease ids scored by expiry and pruned
  in the script. Time comes from the Redis server (TIME) unless a clock is
  injected, so process clocks need not agree. All keys of one call must live
  on one node (no Redis Cluster slot routing).

Both backends take `clock=` (a callable returning seconds) for tests; every
process sharing one Redis must then use the same clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wharf.errors import RateLimited

__all__ = ["Limits", "Lease", "Limiter", "MemoryLimiter", "RedisLimiter", "make_limiter"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 900.0
SWEEP_EVERY_S = 60.0          # MemoryLimiter: how often full buckets are dropped
_EPS = 1e-9


@dataclass(frozen=True)
class Limits:
    """Limits of one scope. None means unlimited; set values must be > 0."""

    rpm: float | None = None
    tpm: float | None = None
    qps: float | None = None
    max_concurrency: int | None = None

    def __post_init__(self):
        for name in ("rpm", "tpm", "qps", "max_concurrency"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"Limits.{name} must be > 0 or None, got {v!r}")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.qps is None and self.max_concurrency is None


Scopes = Sequence[tuple[str, Limits]]


@dataclass(frozen=True)
class _Check:
    scope: str
    reason: str          # "concurrency" | "qps" | "rpm" | "tpm"
    key: str
    cap: float
    rate: float          # refill per second (0 for concurrency)
    cost: float


def _plan(prefix: str, scopes: Scopes, tokens: float) -> list[_Check]:
    checks: list[_Check] = []
    seen: set[str] = set()
    for scope, lim in scopes:
        if scope in seen:       # the first spec of a repeated scope wins
            continue
        seen.add(scope)
        base = f"{prefix}{scope}"
        if lim.max_concurrency is not None:
            checks.append(_Check(scope, "concurrency", base + ":conc", float(lim.max_concurrency), 0.0, 1.0))
        if lim.qps is not None:
            checks.append(_Check(scope, "qps", base + ":qps", float(lim.qps), float(lim.qps), 1.0))
        if lim.rpm is not None:
            checks.append(_Check(scope, "rpm", base + ":rpm", float(lim.rpm), lim.rpm / 60.0, 1.0))
        if lim.tpm is not None:
            checks.append(_Check(scope, "tpm", base + ":tpm", float(lim.tpm), lim.tpm / 60.0, float(tokens)))
    return checks


def _refused(check: _Check, retry_after: float) -> RateLimited:
    exc = RateLimited(f"Rate limit exceeded ({check.reason}).", reason=check.reason,
                      retry_after=max(retry_after, 0.001))
    exc.scope = check.scope  # type: ignore[attr-defined]
    return exc


class Lease:
    """What a successful acquire hands back.

    `adjust_tokens(actual)` settles TPM (any number of times, also after
    release); `release()` frees the concurrency slots and is idempotent.
    """

    def __init__(self, limiter: "Limiter", lease_id: str, tokens: float,
                 tpm_checks: list[_Check], conc_keys: list[str]):
        self.limiter = limiter
        self.id = lease_id
        self.tokens = tokens
        self._tpm = tpm_checks
        self._conc = conc_keys
        self._released = not conc_keys
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._released

    def adjust_tokens(self, actual: float) -> None:
        """Charge (actual > reserved) or refund (actual < reserved) the TPM buckets."""
        with self._lock:
            delta = actual - self.tokens
            self.tokens = actual
        if delta and self._tpm:
            self.limiter._adjust(self._tpm, delta)

    async def aadjust_tokens(self, actual: float) -> None:
        with self._lock:
            delta = actual - self.tokens
            self.tokens = actual
        if delta and self._tpm:
            await self.limiter._aadjust(self._tpm, delta)

    def _take_release(self) -> bool:
        with self._lock:
            if self._released:
                return False
            self._released = True
            return True

    def release(self) -> None:
        if self._take_release():
            self.limiter._release(self._conc, self.id)

    async def arelease(self) -> None:
        if self._take_release():
            await self.limiter._arelease(self._conc, self.id)

    def refresh(self, ttl: float | None = None) -> None:
        """Push the concurrency slots' expiry to now + ttl (for very long streams)."""
        if not self._released:
            self.limiter._refresh(self._conc, self.id, ttl or self.limiter.lease_ttl)

    async def arefresh(self, ttl: float | None = None) -> None:
        if not self._released:
            await asyncio.to_thread(self.refresh, ttl)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    async def __aenter__(self) -> "Lease":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.arelease()

    def __repr__(self) -> str:
        return f"Lease(id={self.id!r}, tokens={self.tokens}, released={self._released})"


class Limiter:
    """Base class: the public API shared by both backends."""

    prefix = "wharf:rl:"

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 lease_ttl: float = DEFAULT_LEASE_TTL, concurrency_retry_after: float = 1.0):
        self.clock = clock
        self.lease_ttl = float(lease_ttl)
        self.concurrency_retry_after = float(concurrency_retry_after)

    # -- public
    def acquire(self, scopes: Scopes, tokens: float = 0, *, lease_ttl: float | None = None) -> Lease:
        """Take 1 request from rpm/qps, `tokens` from tpm and a concurrency
        slot in every scope, or nothing at all (raises RateLimited)."""
        checks = _plan(self.prefix, scopes, tokens)
        lease_id = uuid.uuid4().hex
        if checks:
            self._acquire(checks, lease_id, float(lease_ttl or self.lease_ttl))
        return self._lease(lease_id, tokens, checks)

    async def aacquire(self, scopes: Scopes, tokens: float = 0, *, lease_ttl: float | None = None) -> Lease:
        return self.acquire(scopes, tokens, lease_ttl=lease_ttl)

    def close(self) -> None:
        pass

    # -- backend hooks
    def _lease(self, lease_id: str, tokens: float, checks: list[_Check]) -> Lease:
        return Lease(self, lease_id, tokens,
                     [c for c in checks if c.reason == "tpm"],
                     [c.key for c in checks if c.reason == "concurrency"])

    def _fail(self, checks: list[_Check], first: int, wait: float, conc_failed: bool) -> RateLimited:
        if conc_failed:
            wait = max(wait, self.concurrency_retry_after)
        return _refused(checks[first], wait)

    def _acquire(self, checks: list[_Check], lease_id: str, ttl: float) -> None:
        raise NotImplementedError

    def _adjust(self, tpm: list[_Check], delta: float) -> None:
        raise NotImplementedError

    async def _aadjust(self, tpm: list[_Check], delta: float) -> None:
        self._adjust(tpm, delta)

    def _release(self, conc_keys: list[str], lease_id: str) -> None:
        raise NotImplementedError

    async def _arelease(self, conc_keys: list[str], lease_id: str) -> None:
        self._release(conc_keys, lease_id)

    def _refresh(self, conc_keys: list[str], lease_id: str, ttl: float) -> None:
        raise NotImplementedError


class MemoryLimiter(Limiter):
    """In-process limiter (the default). Thread-safe; never blocks the event loop."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}          # key -> [level, ts]
        self._gates: dict[str, dict[str, float]] = {}       # key -> {lease_id: expiry}
        # key -> when its bucket is full again. A full bucket is the same as none, so they
        # are dropped now and then: keys such as a client IP or a presented credential come
        # and go, and would otherwise pile up in memory for ever.
        self._full_at: dict[str, float] = {}
        self._next_sweep = 0.0

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.monotonic()

    def _level(self, c: _Check, now: float) -> tuple[float, float]:
        st = self._buckets.get(c.key)
        if st is None:
            return c.cap, now
        level, ts = st
        if now > ts:
            level += (now - ts) * c.rate
        return min(level, c.cap), max(ts, now)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY_S
        for key in [k for k, t in self._full_at.items() if t <= now]:
            del self._full_at[key]
            self._buckets.pop(key, None)

    def _store(self, c: _Check, level: float, ts: float, now: float) -> None:
        self._buckets[c.key] = [level, ts]
        self._full_at[c.key] = max(ts, now) + (c.cap - level) / c.rate

    def _acquire(self, checks, lease_id, ttl):
        with self._lock:
            now = self._now()
            if now >= self._next_sweep:
                self._sweep(now)
            first, wait, conc_failed = -1, 0.0, False
            levels: list[tuple[float, float] | None] = []
            for i, c in enumerate(checks):
                if c.reason == "concurrency":
                    gate = self._gates.setdefault(c.key, {})
                    for lid in [lid for lid, exp in gate.items() if exp <= now]:
                        del gate[lid]
                    levels.append(None)
                    if len(gate) >= c.cap:
                        conc_failed = True
                        first = i if first < 0 else first
                else:
                    level, ts = self._level(c, now)
                    levels.append((level, ts))
                    need = min(c.cost, c.cap)
                    if level + _EPS < need:
                        wait = max(wait, (need - level) / c.rate)
                        first = i if first < 0 else first
            if first >= 0:
                raise self._fail(checks, first, wait, conc_failed)
            for c, st in zip(checks, levels):
                if st is None:
                    self._gates[c.key][lease_id] = now + ttl
                else:
                    self._store(c, st[0] - c.cost, st[1], now)

    def _adjust(self, tpm, delta):
        with self._lock:
            now = self._now()
            for c in tpm:
                level, ts = self._level(c, now)
                self._store(c, min(c.cap, level - delta), ts, now)

    def _release(self, conc_keys, lease_id):
        with self._lock:
            for k in conc_keys:
                gate = self._gates.get(k)
                if gate is not None:
                    gate.pop(lease_id, None)
                    if not gate:
                        del self._gates[k]

    def _refresh(self, conc_keys, lease_id, ttl):
        with self._lock:
            now = self._now()
            for k in conc_keys:
                gate = self._gates.get(k)
                if gate is not None and lease_id in gate:
                    gate[lease_id] = now + ttl


# ------------------------------------------------------------------ Redis

_LUA_NOW = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: one per check. ARGV: now|"", ttl, eps, then per check: kind ("c"|"b"), cap, rate, cost.
# Returns {0} on success, or {first_failing_index (1-based), tostring(wait), conc_failed}.
_LUA_ACQUIRE = _LUA_NOW + """
local lease = ARGV[2]
local ttl = tonumber(ARGV[3])
local eps = tonumber(ARGV[4])
local first, wait, conc_failed = 0, 0, 0
local levels, stamps = {}, {}
for i = 1, #KEYS do
  local b = 4 + (i - 1) * 4
  local kind, cap, rate, cost = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= cap then
      conc_failed = 1
      if first == 0 then first = i end
    end
  else
    local st = redis.call('HMGET', KEYS[i], 'l', 't')
    local level, ts = tonumber(st[1]), tonumber(st[2])
    if level == nil or ts == nil then
      level, ts = cap, now
    else
      if now > ts then level = level + (now - ts) * rate; ts = now end
      if level > cap then level = cap end
    end
    levels[i], stamps[i] = level, ts
    local need = math.min(cost, cap)
    if level + eps < need then
      local w = (need - level) / rate
      if w > wait then wait = w end
      if first == 0 then first = i end
    end
  end
end
if first > 0 then return {first, tostring(wait), conc_failed} end
for i = 1, #KEYS do
  local b = 4 + (i - 1) * 4
  local kind, cap, rate, cost = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'c' then
    redis.call('ZADD', KEYS[i], now + ttl, lease)
    local ms = math.ceil(ttl * 1000) + 1000
    local cur = redis.call('PTTL', KEYS[i])
    if cur < ms then redis.call('PEXPIRE', KEYS[i], ms) end
  else
    local left = levels[i] - cost
    redis.call('HSET', KEYS[i], 'l', tostring(left), 't', tostring(stamps[i]))
    redis.call('PEXPIRE', KEYS[i], math.ceil(((cap - left) / rate + 1) * 1000))
  end
end
return {0}
"""

# KEYS: tpm bucket keys. ARGV: now|"", delta, then per key: cap, rate.
_LUA_ADJUST = _LUA_NOW + """
local delta = tonumber(ARGV[2])
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 + (i - 1) * 2 + 1]), tonumber(ARGV[2 + (i - 1) * 2 + 2])
  local st = redis.call('HMGET', KEYS[i], 'l', 't')
  local level, ts = tonumber(st[1]), tonumber(st[2])
  if level == nil or ts == nil then
    level, ts = cap, now
  else
    if now > ts then level = level + (now - ts) * rate; ts = now end
    if level > cap then level = cap end
  end
  local left = level - delta
  if left > cap then left = cap end
  redis.call('HSET', KEYS[i], 'l', tostring(left), 't', tostring(ts))
  redis.call('PEXPIRE', KEYS[i], math.ceil(((cap - left) / rate + 1) * 1000))
end
return 1
"""

_LUA_RELEASE = """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# ARGV: now|"", lease, ttl
_LUA_REFRESH = _LUA_NOW + """
local ttl = tonumber(ARGV[3])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[2])
  local ms = math.ceil(ttl * 1000) + 1000
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return 1
"""


class RedisLimiter(Limiter):
    """Limiter shared by every process that uses the same Redis.

    Sync calls use one redis-py client (thread-safe pool); async calls run
    them in a worker thread (asyncio.to_thread). Redis errors from acquire
    propagate (the caller decides: fail closed with Overloaded, or open);
    errors from release are logged and swallowed, since the slot expires
    on its own.
    """

    def __init__(self, url: str, *, prefix: str | None = None, client=None, **kw):
        super().__init__(**kw)
        import redis

        if prefix is not None:
            self.prefix = prefix
        self.url = url
        self.redis = client if client is not None else redis.Redis.from_url(url)
        self._acq = self.redis.register_script(_LUA_ACQUIRE)
        self._adj = self.redis.register_script(_LUA_ADJUST)
        self._rel = self.redis.register_script(_LUA_RELEASE)
        self._ref = self.redis.register_script(_LUA_REFRESH)

    def _now_arg(self) -> str:
        return "" if self.clock is None else repr(float(self.clock()))

    async def aacquire(self, scopes: Scopes, tokens: float = 0, *, lease_ttl: float | None = None) -> Lease:
        return await asyncio.to_thread(self.acquire, scopes, tokens, lease_ttl=lease_ttl)

    def _acquire(self, checks, lease_id, ttl):
        args: list = [self._now_arg(), lease_id, repr(ttl), repr(_EPS)]
        for c in checks:
            args += ["c" if c.reason == "concurrency" else "b", repr(c.cap), repr(c.rate), repr(c.cost)]
        res = self._acq(keys=[c.key for c in checks], args=args)
        first = int(res[0])
        if first:
            raise self._fail(checks, first - 1, float(res[1]), bool(int(res[2])))

    def _adjust(self, tpm, delta):
        args: list = [self._now_arg(), repr(float(delta))]
        for c in tpm:
            args += [repr(c.cap), repr(c.rate)]
        self._adj(keys=[c.key for c in tpm], args=args)

    async def _aadjust(self, tpm, delta):
        await asyncio.to_thread(self._adjust, tpm, delta)

    def _release(self, conc_keys, lease_id):
        try:
            self._rel(keys=conc_keys, args=[lease_id])
        except Exception:   # the slot expires by itself; never mask the caller's error
            log.warning("rate-limit lease release failed; it will expire", exc_info=True)

    async def _arelease(self, conc_keys, lease_id):
        await asyncio.to_thread(self._release, conc_keys, lease_id)

    def _refresh(self, conc_keys, lease_id, ttl):
        self._ref(keys=conc_keys, args=[self._now_arg(), lease_id, repr(float(ttl))])

    def close(self) -> None:
        self.redis.close()


def make_limiter(redis_url: str | None = None, **kw) -> Limiter:
    """RedisLimiter when a URL is given (shared by replicas), else MemoryLimiter."""
    if redis_url:
        return RedisLimiter(redis_url, **kw)
    return MemoryLimiter(**kw)
