"""Item 4: PostgreSQL and Redis unavailable for a moment.

One server on a throwaway PostgreSQL cluster and a redis-server of its own. Postgres is
stopped, then started again; redis-server is killed, then started again on the same port.
While either is down every dialect answers promptly with its own retryable "unavailable"
shape (OpenAI/WeLM/SenseNova 503, Qianfan 200 + error_code 336100), never a hang or a bare
500; when it is back the service resumes by itself; nothing is double-counted.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.rel_clients import DIALECTS, error_code, is_error, provision, request_for
from tests.services import running_postgres, running_redis

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg():
    """A cluster of this module's own: the test stops and starts it."""
    with running_postgres() as cluster:
        cluster.url = cluster.new_database()
        yield cluster


@pytest.fixture(scope="module")
def redis_srv():
    """A redis-server of this module's own: the test kills and restarts it."""
    with running_redis() as server:
        yield server


def _call(server, acct, timeout=30) -> httpx.Response:
    method, path, params, headers, body = request_for(acct, max_tokens=4)
    return httpx.request(method, server.url + path, params=params, headers=headers, json=body, timeout=timeout)


def _all_ok(server, accounts) -> bool:
    for d in DIALECTS:
        r = _call(server, accounts[d])
        if r.status_code != 200 or is_error(d, r):
            return False
    return True


def _assert_unavailable(server, accounts, counts) -> None:
    for d in DIALECTS:
        t0 = time.monotonic()
        r = _call(server, accounts[d])
        assert time.monotonic() - t0 < 15, "hung"
        assert is_error(d, r), (d, r.status_code, r.text[:300])
        assert error_code(d, r) in (503, 336100), (d, r.status_code, r.text[:300])
        counts[d] += 1


def _wait_recovered(server, accounts, timeout=30) -> float:
    t0 = time.monotonic()
    while not _all_ok(server, accounts):
        assert time.monotonic() - t0 < timeout, "did not recover"
        time.sleep(0.5)
    return time.monotonic() - t0


def test_postgres_and_redis_outages(server_factory, pg, redis_srv):
    server = server_factory(extra_env={"WHARF_DATABASE_URL": pg.url, "WHARF_REDIS_URL": redis_srv.url})
    # A (generous) limit, so every request goes through the Redis limiter.
    accounts = {d: provision(server, d, rpm=100_000) for d in DIALECTS}
    assert _all_ok(server, accounts)
    down = {d: 0 for d in DIALECTS}

    pg.stop()
    try:
        _assert_unavailable(server, accounts, down)
    finally:
        pg.start()
    pg_recovery = _wait_recovered(server, accounts)

    redis_srv.kill()
    try:
        _assert_unavailable(server, accounts, down)
    finally:
        redis_srv.start()
    redis_recovery = _wait_recovered(server, accounts)

    # Books: one record per request that reached the pipeline, none doubled, nothing reserved.
    p = server.platform
    p.store.engine.dispose()                  # its pooled connections died with postgres
    for d, acct in accounts.items():
        recs = p.usage.records(account_id=acct.account_id, limit=1000)
        assert len({r["request_id"] for r in recs}) == len(recs)
        statuses = [r["status"] for r in recs]
        assert statuses.count("error:overloaded") == 1, (d, statuses)   # the Redis outage, recorded
        st = p.quota.status(acct.account_id)
        assert (st.chars_reserved, st.tokens_reserved) == (0, 0), st
        assert st.chars_used == sum(r["generated_chars"] for r in recs)
        assert st.tokens_used == sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs)
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    print(f"postgres recovery {pg_recovery:.1f} s, redis recovery {redis_recovery:.1f} s")
