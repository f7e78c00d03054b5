"""Quota reservations (race-free on SQLite and PostgreSQL) and usage records."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from wharf.errors import Conflict, NotFound, QuotaExceeded
from wharf.platform.quota import QuotaBook

UTC = dt.timezone.utc


def test_concurrent_reservations_never_overspend(platform):
    a = platform.accounts.create("alice", quota_chars_per_day=100)
    ok, refused, other = [], [], []
    barrier = threading.Barrier(50)

    def one(i):
        barrier.wait()
        try:
            platform.quota.reserve(a.id, f"req-{i}", chars=10)
            ok.append(i)
        except QuotaExceeded as e:
            refused.append(e.reason)
        except Exception as e:          # pragma: no cover - shows up in the assertion
            other.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert other == []
    assert len(ok) == 10 and len(refused) == 40 and set(refused) == {"daily"}
    st = platform.quota.status(a.id)
    assert (st.chars_reserved, st.chars_used) == (100, 0)
    # settle some below their reservation: the freed quota can be reserved again
    for i in ok[:5]:
        assert platform.quota.settle(f"req-{i}", actual_chars=4, actual_tokens=3)
    st = platform.quota.status(a.id)
    assert (st.chars_reserved, st.chars_used, st.tokens_used) == (50, 20, 15)
    platform.quota.reserve(a.id, "more", chars=30)
    with pytest.raises(QuotaExceeded):
        platform.quota.reserve(a.id, "too-much", chars=1)


def test_settle_release_idempotent(platform):
    a = platform.accounts.create("alice", quota_tokens_per_day=50)
    q = platform.quota
    q.reserve(a.id, "r1", tokens=30)
    with pytest.raises(Conflict):
        q.reserve(a.id, "r1", tokens=1)           # one reservation per request id
    assert q.status(a.id).tokens_reserved == 30   # the refused duplicate changed nothing
    with pytest.raises(QuotaExceeded):
        q.reserve(a.id, "r2", tokens=21)
    assert q.release("r1") is True
    assert q.release("r1") is False
    assert q.settle("r1", 10, 10) is False
    st = q.status(a.id)
    assert (st.tokens_reserved, st.tokens_used) == (0, 0)
    q.reserve(a.id, "r3", tokens=50)
    assert q.settle("r3", actual_tokens=50)
    with pytest.raises(QuotaExceeded):
        q.reserve(a.id, "r4", tokens=1)
    with pytest.raises(NotFound):
        q.reserve(4242, "r5", tokens=1)


def test_unlimited_account_still_counts(platform):
    a = platform.accounts.create("bob")
    platform.quota.reserve(a.id, "r1", chars=10**9, tokens=10**9)
    platform.quota.settle("r1", 7, 9)
    st = platform.quota.status(a.id)
    assert (st.chars_limit, st.chars_used, st.tokens_used, st.chars_reserved) == (None, 7, 9, 0)


def test_quota_day_in_timezone(platform):
    a = platform.accounts.create("alice", quota_chars_per_day=10)
    q = QuotaBook(platform.store, "Asia/Shanghai")
    # 2025-01-01 17:00 UTC is already 2025-01-02 01:00 in Shanghai.
    late = dt.datetime(2025, 1, 1, 17, 0, tzinfo=UTC)
    early = dt.datetime(2025, 1, 1, 15, 0, tzinfo=UTC)
    assert q.today(late) == dt.date(2025, 1, 2) and q.today(early) == dt.date(2025, 1, 1)
    q.reserve(a.id, "d1", chars=10, now=early)
    q.reserve(a.id, "d2", chars=10, now=late)     # a new day, a fresh quota
    with pytest.raises(QuotaExceeded):
        q.reserve(a.id, "d3", chars=1, now=late)
    assert q.status(a.id, dt.date(2025, 1, 1)).chars_reserved == 10


def test_reconcile_stale(platform):
    a = platform.accounts.create("alice", quota_chars_per_day=10)
    q = platform.quota
    old = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    q.reserve(a.id, "crashed", chars=10, now=old)
    q.reserve(a.id, "fresh", chars=0)
    assert q.reconcile_stale(dt.timedelta(hours=1)) == 1
    assert q.status(a.id, q.today(old)).chars_reserved == 0
    assert q.reconcile_stale(dt.timedelta(hours=1)) == 0
    assert q.release("fresh") is True


def test_record_usage_exactly_once_and_summary(platform):
    a = platform.accounts.create("alice")
    b = platform.accounts.create("bob")
    svc = platform.services.create(a.id, "ep1", "xl", "completions")
    u = platform.usage
    t0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert u.record_usage(request_id="r1", account_id=a.id, credential_id=None, service_id=svc.id,
                          model="xl", dialect="qianfan", prompt_tokens=5, completion_tokens=7,
                          generated_chars=20, status="ok", ttft_ms=12, latency_ms=80, user="u1",
                          created_at=t0)
    assert not u.record_usage(request_id="r1", account_id=a.id, model="xl", dialect="qianfan",
                              prompt_tokens=999, created_at=t0)
    u.record_usage(request_id="r2", account_id=a.id, model="tiny-model", dialect="openai",
                   prompt_tokens=1, completion_tokens=1, status="error:timeout",
                   created_at=t0 + dt.timedelta(days=1))
    u.record_usage(request_id="r3", account_id=b.id, model="xl", dialect="welm", generated_chars=3,
                   status="cancelled", created_at=t0)
    by_day = u.usage_summary(a.id, group_by="day")
    assert [(r.key, r.requests, r.prompt_tokens, r.completion_tokens, r.errors) for r in by_day] == [
        ("2025-03-01", 1, 5, 7, 0), ("2025-03-02", 1, 1, 1, 1)]
    by_model = {r.key: r.requests for r in u.usage_summary(None, group_by="model")}
    assert by_model == {"xl": 2, "tiny-model": 1}
    by_service = u.usage_summary(a.id, group_by="service")
    assert {r.key for r in by_service} == {svc.endpoint, "-"}           # the prefixed endpoint
    only_first = u.usage_summary(a.id, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 1))
    assert len(only_first) == 1 and only_first[0].generated_chars == 20
    recs = u.records(b.id)
    assert [r["request_id"] for r in recs] == ["r3"] and recs[0]["status"] == "cancelled"


def test_record_usage_concurrent_same_request(platform):
    a = platform.accounts.create("alice")
    results = []

    def one():
        results.append(platform.usage.record_usage(request_id="same", account_id=a.id, model="xl",
                                                   dialect="openai"))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 7 + [True]


def test_settle_and_record_is_one_transaction_that_never_costs_the_other(platform):
    a = platform.accounts.create("erin", quota_chars_per_day=100, quota_tokens_per_day=100)
    q = platform.quota
    fields = dict(account_id=a.id, model="m", dialect="openai", prompt_tokens=3, completion_tokens=4,
                  generated_chars=9, status="ok")
    q.reserve(a.id, "s1", chars=40, tokens=40)
    assert q.extend("s1", chars=10) is True
    platform.settle_and_record("s1", chars=9, tokens=7, reserved=True, **fields)
    st = q.status(a.id)
    assert (st.chars_used, st.tokens_used, st.chars_reserved, st.tokens_reserved) == (9, 7, 0, 0)
    [rec] = platform.usage.records(a.id)
    assert (rec["request_id"], rec["completion_tokens"], rec["generated_chars"]) == ("s1", 4, 9)
    # A second end of the same request changes nothing (settle and record are both once-only).
    platform.settle_and_record("s1", chars=9, tokens=7, reserved=True, **fields)
    assert q.status(a.id).chars_used == 9 and len(platform.usage.records(a.id)) == 1
    # The usage write fails (a malformed record): the quota is still settled on its own.
    q.reserve(a.id, "s2", chars=50, tokens=50)
    platform.settle_and_record("s2", chars=5, tokens=5, reserved=True, **{**fields, "prompt_tokens": "many"})
    st = q.status(a.id)
    assert (st.chars_used, st.chars_reserved) == (14, 0)
    assert [r["request_id"] for r in platform.usage.records(a.id)] == ["s1"]
    # Growing past the day's limit is refused and changes nothing.
    q.reserve(a.id, "s3", chars=80, tokens=10)
    assert q.extend("s3", chars=7) is False
    assert q.status(a.id).chars_reserved == 80
    assert q.extend("gone", chars=1) is False
