"""Two `wharf serve` replicas sharing one real PostgreSQL database and one real redis-server:
together they never exceed an account's RPM or its daily quota, whatever dialect or replica
each request uses, and every request has exactly one usage record."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

from tests.policy_http.dialects import ALL_DIALECTS, acall, provision
from tests.policy_http.test_policy_matrix import PROMPT, _check_quota_concurrency, usage_rows


@pytest.fixture(scope="module")
def replicas(server_factory, pg_cluster, redis_url):
    from wharf.platform.secretbox import SecretBox

    env = {"WHARF_DATABASE_URL": pg_cluster.new_database(), "WHARF_REDIS_URL": redis_url,
           "WHARF_SECRET_KEY": SecretBox.generate_key()}     # one key: SenseNova secrets decrypt anywhere
    a = server_factory(extra_env=env)
    b = server_factory(extra_env=env)
    old = os.environ.get("WHARF_SECRET_KEY")
    os.environ["WHARF_SECRET_KEY"] = env["WHARF_SECRET_KEY"]
    try:
        a.platform, b.platform        # the tests' own handle on the shared store, with the same key
    finally:
        if old is None:
            os.environ.pop("WHARF_SECRET_KEY")
        else:
            os.environ["WHARF_SECRET_KEY"] = old
    return a, b, redis_url


def test_two_replicas_share_one_rpm(replicas):
    a, b, redis_url = replicas
    rpm = 6
    ident = provision(a, "replicas-rpm", rpm=rpm)
    n = 28

    async def fire():
        async with httpx.AsyncClient(timeout=300) as c:
            # Qianfan's OAuth token first (not a generation request), then the burst.
            from tests.policy_http.dialects import qf_token
            qf_token(a.url, ident)
            jobs = [acall(ALL_DIALECTS[i % len(ALL_DIALECTS)], (a, b)[i % 2].url, ident, PROMPT, 1, client=c)
                    for i in range(n)]
            t0 = time.monotonic()
            replies = await asyncio.gather(*jobs)
            return replies, time.monotonic() - t0
    replies, elapsed = asyncio.run(fire())
    outcomes = [r.outcome for r in replies]
    assert set(outcomes) <= {"ok", "rate_limited"}, [r.body for r in replies if r.outcome not in
                                                     ("ok", "rate_limited")]
    accepted = outcomes.count("ok")
    refill = int(elapsed * rpm / 60)
    by_replica = [sum(1 for i, r in enumerate(replies) if r.outcome == "ok" and i % 2 == k) for k in (0, 1)]
    print(f"\n{n} requests over 2 replicas in {elapsed:.1f} s: accepted {accepted} (rpm {rpm}, "
          f"refill allows +{refill}; per replica {by_replica})")
    # Alone, each replica would have let `rpm` through: together they let through rpm, not 2 x rpm.
    assert rpm <= accepted <= rpm + refill
    rows = usage_rows(a, ident.account_id)
    assert len(rows) == n and len({r["request_id"] for r in rows}) == n
    assert sorted(r["status"] for r in rows) == sorted(["ok"] * accepted + ["error:rate_limited"] * (n - accepted))
    import redis
    assert redis.Redis.from_url(redis_url).exists(f"wharf:rl:account:{ident.account_id}:rpm")


def test_two_replicas_50_concurrent_quota_fits_10_postgresql(replicas):
    a, b, _ = replicas
    ok, used, limit = _check_quota_concurrency(a, [a, b])
    print(f"\n50 concurrent over 2 replicas (PostgreSQL): accepted {ok}, tokens used {used} of {limit}")
