"""Rate limits: both backends, the Redis one against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from wharf.errors import RateLimited
from wharf.platform.limits import Limits, MemoryLimiter, RedisLimiter, make_limiter

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    return request.param


@pytest.fixture
def make(backend, request):
    """make(**kw) -> a limiter of the current backend with a fake clock (clock=...)."""
    made = []

    def factory(**kw):
        kw.setdefault("clock", FakeClock())
        if backend == "memory":
            lim = MemoryLimiter(**kw)
        else:
            url = request.getfixturevalue("redis_url")
            lim = RedisLimiter(url, prefix=f"test:{uuid.uuid4().hex[:8]}:", **kw)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        lim.close()


def refused(lim, scopes, tokens=0) -> RateLimited:
    with pytest.raises(RateLimited) as ei:
        lim.acquire(scopes, tokens)
    return ei.value


# ----------------------------------------------------------------- rpm / qps


def test_rpm_burst_then_refusal_and_refill(make):
    clock = FakeClock()
    lim = make(clock=clock)
    s = [("account:1", Limits(rpm=3))]
    for _ in range(3):
        lim.acquire(s)
    e = refused(lim, s)
    assert e.reason == "rpm" and e.scope == "account:1"
    assert e.retry_after == pytest.approx(20.0, rel=1e-3)     # 1 request / (3/60 per s)
    clock.advance(10)
    e = refused(lim, s)
    assert e.retry_after == pytest.approx(10.0, rel=1e-3)
    clock.advance(10)
    lim.acquire(s)                                            # one refilled
    assert refused(lim, s).reason == "rpm"
    clock.advance(3600)                                       # refill caps at capacity
    for _ in range(3):
        lim.acquire(s)
    refused(lim, s)


def test_fractional_rpm(make):
    clock = FakeClock()
    lim = make(clock=clock)
    s = [("cred:9", Limits(rpm=0.5))]                         # one request per 2 minutes
    lim.acquire(s)
    e = refused(lim, s)
    assert e.retry_after == pytest.approx(120.0, rel=1e-3)
    clock.advance(120)
    lim.acquire(s)


def test_qps(make):
    clock = FakeClock()
    lim = make(clock=clock)
    s = [("service:2", Limits(qps=2))]
    lim.acquire(s)
    lim.acquire(s)
    e = refused(lim, s)
    assert e.reason == "qps" and e.retry_after == pytest.approx(0.5, rel=1e-3)
    clock.advance(0.5)
    lim.acquire(s)
    refused(lim, s)


# ----------------------------------------------------------------- tpm


def test_tpm_reserve_and_adjust(make):
    clock = FakeClock()
    lim = make(clock=clock)
    s = [("account:1", Limits(tpm=1000))]
    a = lim.acquire(s, tokens=600)
    e = refused(lim, s, tokens=600)
    assert e.reason == "tpm"
    assert e.retry_after == pytest.approx(200 / (1000 / 60), rel=1e-3)
    a.adjust_tokens(100)                                      # refund 500 -> 900 left
    b = lim.acquire(s, tokens=600)                            # 300 left
    b.adjust_tokens(900)                                      # charge 300 more -> 0 left
    assert refused(lim, s, tokens=1).reason == "tpm"
    a.adjust_tokens(100)                                      # no change, no refund twice
    assert refused(lim, s, tokens=1).reason == "tpm"
    clock.advance(6)                                          # +100 tokens
    lim.acquire(s, tokens=100)
    refused(lim, s, tokens=1)


def test_tpm_refund_never_exceeds_capacity(make):
    lim = make()
    s = [("account:1", Limits(tpm=100))]
    lease = lim.acquire(s, tokens=10)
    lease.adjust_tokens(-1000)                                # absurd refund: capped at capacity
    lim.acquire(s, tokens=100)
    refused(lim, s, tokens=1)


def test_request_larger_than_tpm_capacity_runs_once_then_debt(make):
    clock = FakeClock()
    lim = make(clock=clock)
    s = [("account:1", Limits(tpm=600))]
    lim.acquire(s, tokens=1200)                               # allowed on a full bucket
    e = refused(lim, s, tokens=1)
    assert e.retry_after == pytest.approx(601 / 10, rel=1e-3)  # 600 of debt + 1, at 10 tokens/s
    clock.advance(120)
    lim.acquire(s, tokens=1200)


# ----------------------------------------------------------------- all or nothing


def test_all_or_nothing_across_scopes(make):
    lim = make()
    a = ("account:1", Limits(rpm=10, tpm=1000, max_concurrency=5))
    b = ("service:2", Limits(rpm=1))
    lim.acquire([a, b], tokens=100).release()
    e = refused(lim, [a, b], tokens=100)
    assert e.reason == "rpm" and e.scope == "service:2"
    # nothing was taken from account:1 by the refused call: 9 requests, 900 tokens and 5 slots left
    leases = [lim.acquire([a], tokens=100) for _ in range(5)]
    assert refused(lim, [a]).reason == "concurrency"
    for lease in leases:
        lease.release()
    for _ in range(4):
        lim.acquire([a], tokens=100).release()
    assert refused(lim, [a], tokens=1).reason == "rpm"


def test_all_or_nothing_concurrency_slot_not_taken_on_refusal(make):
    lim = make()
    a = ("account:1", Limits(max_concurrency=1))
    b = ("cred:7", Limits(tpm=10))
    lim.acquire([b], tokens=10)
    e = refused(lim, [a, b], tokens=5)
    assert e.reason == "tpm" and e.scope == "cred:7"
    lease = lim.acquire([a])                                  # the slot is still free
    assert refused(lim, [a]).reason == "concurrency"
    lease.release()


def test_reason_is_first_failing_check_and_retry_after_the_longest_wait(make):
    lim = make()
    s = [("account:1", Limits(rpm=1, tpm=60))]
    lim.acquire(s, tokens=60)
    e = refused(lim, s, tokens=60)
    assert e.reason == "rpm"
    assert e.retry_after == pytest.approx(60.0, rel=1e-3)     # both need 60 s


def test_repeated_scope_counts_once(make):
    lim = make()
    s = [("account:1", Limits(rpm=2)), ("account:1", Limits(rpm=2))]
    lim.acquire(s)
    lim.acquire(s)
    refused(lim, s)


# ----------------------------------------------------------------- concurrency


def test_concurrency_gate_and_release(make):
    lim = make()
    s = [("service:2", Limits(max_concurrency=2))]
    l1 = lim.acquire(s)
    l2 = lim.acquire(s)
    e = refused(lim, s)
    assert e.reason == "concurrency" and e.retry_after == pytest.approx(1.0)
    l1.release()
    l1.release()                                              # idempotent: frees one slot only
    assert l1.released
    l3 = lim.acquire(s)
    refused(lim, s)
    with l2:
        pass
    with lim.acquire(s) as l4:
        assert not l4.released
        refused(lim, s)
    assert l4.released
    l3.release()


def test_concurrency_slot_of_a_lost_lease_expires(make):
    clock = FakeClock()
    lim = make(clock=clock, lease_ttl=30)
    s = [("service:2", Limits(max_concurrency=1))]
    lost = lim.acquire(s)                                     # never released
    clock.advance(29)
    refused(lim, s)
    lost.refresh()                                            # now expires at +30 from here
    clock.advance(29)
    refused(lim, s)
    clock.advance(2)
    lim.acquire(s, lease_ttl=5).release()
    lost.release()                                            # late release is harmless


def test_async_usage(make):
    lim = make()
    s = [("account:1", Limits(max_concurrency=1, tpm=100))]

    async def main():
        async with await lim.aacquire(s, tokens=50) as lease:
            with pytest.raises(RateLimited) as ei:
                await lim.aacquire(s, tokens=10)
            assert ei.value.reason == "concurrency"
            await lease.aadjust_tokens(10)
            await lease.arefresh()
        assert lease.released
        lease2 = await lim.aacquire(s, tokens=90)             # 90 left after the refund
        await lease2.arelease()
        await lease2.arelease()
        with pytest.raises(RateLimited) as ei:
            await lim.aacquire(s, tokens=5)
        assert ei.value.reason == "tpm"

    asyncio.run(main())


def test_unlimited_and_empty_scopes(make):
    lim = make()
    for _ in range(100):
        with lim.acquire([("account:1", Limits())], tokens=10**9) as lease:
            lease.adjust_tokens(5)
    lim.acquire([]).release()


def test_limits_validation_and_factory(redis_url):
    with pytest.raises(ValueError):
        Limits(rpm=0)
    with pytest.raises(ValueError):
        Limits(max_concurrency=-1)
    assert Limits().unlimited and not Limits(qps=1).unlimited
    assert isinstance(make_limiter(None), MemoryLimiter)
    assert isinstance(make_limiter(""), MemoryLimiter)
    lim = make_limiter(redis_url)
    assert isinstance(lim, RedisLimiter)
    lim.close()


# ----------------------------------------------------------------- redis specifics


def test_redis_server_clock_and_key_expiry(redis_url):
    import redis

    lim = RedisLimiter(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}:")   # Redis TIME clock
    s = [("account:1", Limits(rpm=5, tpm=1000, max_concurrency=3))]
    leases = [lim.acquire(s, tokens=10) for _ in range(3)]
    e = refused(lim, s)
    assert e.reason == "concurrency"
    for lease in leases:
        lease.release()
    lim.acquire(s).release()
    lim.acquire(s).release()
    e = refused(lim, s)
    assert e.reason == "rpm" and 11.0 < e.retry_after <= 12.0
    r = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in r.keys(lim.prefix + "*"))
    assert keys == [lim.prefix + "account:1:rpm", lim.prefix + "account:1:tpm"]  # empty gate removed
    for k in keys:
        assert 0 < r.pttl(k) <= 61_000                         # nothing lives forever
    lease = lim.acquire([("account:2", Limits(max_concurrency=3))])
    assert 0 < r.pttl(lim.prefix + "account:2:conc") <= (900 + 1) * 1000
    lease.release()
    lim.close()


WORKER = textwrap.dedent("""
    import json, os, sys, time
    import redis
    from wharf.errors import RateLimited
    from wharf.platform.limits import Limits, RedisLimiter
    url, prefix, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    r = redis.Redis.from_url(url)
    if mode == "fixed":            # frozen clock: no refill, the total must be exact
        lim = RedisLimiter(url, prefix=prefix, clock=lambda: 5000.0)
        s = [("account:1", Limits(rpm=40, tpm=4000)), ("service:1", Limits(qps=1000))]
    elif mode == "crash":
        lim = RedisLimiter(url, prefix=prefix, clock=lambda: 5000.0, lease_ttl=30)
        lim.acquire([("service:1", Limits(max_concurrency=1))])
        print(json.dumps({"held": 1}), flush=True)
        os._exit(0)                # dies holding the slot
    else:                          # real clock, concurrency gate
        lim = RedisLimiter(url, prefix=prefix)
        s = [("service:1", Limits(max_concurrency=2))]     # 2 processes x 3 threads compete
    while r.get(prefix + "go") is None:
        time.sleep(0.001)
    import threading
    lock = threading.Lock()
    stats = {"ok": 0, "refused": 0, "peak": 0}

    def work():
        for _ in range(n):
            try:
                lease = lim.acquire(s, tokens=50)
            except RateLimited:
                with lock:
                    stats["refused"] += 1
                continue
            with lock:
                stats["ok"] += 1
            if mode == "conc":
                active = r.incr(prefix + "active")
                with lock:
                    stats["peak"] = max(stats["peak"], active)
                time.sleep(0.002)
                r.decr(prefix + "active")
            lease.release()

    threads = [threading.Thread(target=work) for _ in range(1 if mode == "fixed" else 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(stats), flush=True)
""")


def _spawn(redis_url, prefix, mode, n):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", WORKER, redis_url, prefix, mode, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _results(procs):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize("mode", ["fixed", "conc"])
def test_two_processes_share_one_budget(redis_url, mode):
    import redis

    r = redis.Redis.from_url(redis_url)
    prefix = f"mp:{uuid.uuid4().hex[:8]}:"
    n = 100 if mode == "fixed" else 60
    procs = [_spawn(redis_url, prefix, mode, n) for _ in range(2)]
    r.set(prefix + "go", 1)                     # start both at once (each polls for it)
    res = _results(procs)
    if mode == "fixed":
        # rpm=40 and tpm=4000/50=80: the rpm bucket binds, exactly 40 in total
        assert sum(x["ok"] for x in res) == 40
        assert sum(x["refused"] for x in res) == 2 * n - 40
    else:
        assert all(x["ok"] > 0 for x in res)
        assert sum(x["refused"] for x in res) > 0             # there was contention
        assert max(x["peak"] for x in res) <= 2
        assert int(r.get(prefix + "active")) == 0
        assert r.zcard(prefix + "service:1:conc") == 0


def test_slot_of_a_dead_process_frees_itself(redis_url):
    prefix = f"mp:{uuid.uuid4().hex[:8]}:"
    (res,) = _results([_spawn(redis_url, prefix, "crash", 0)])
    assert res == {"held": 1}
    clock = FakeClock(5000.0)
    lim = RedisLimiter(redis_url, prefix=prefix, clock=clock)
    s = [("service:1", Limits(max_concurrency=1))]
    assert refused(lim, s).reason == "concurrency"
    clock.advance(30)
    lim.acquire(s).release()
    lim.close()
