"""A credential's own daily quota on top of its account's, on SQLite and PostgreSQL: the
same reservation as the account's (both must hold, the tighter refuses, nothing
overspent by concurrent requests), settlement on both, rotation sharing one day."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from wharf.errors import InvalidParam, QuotaExceeded

UTC = dt.timezone.utc


def _key(platform, account_id: int, **quota) -> int:
    cid = platform.credentials.create(account_id, "api_key").info.id
    if quota:
        platform.key_scopes.set(cid, **quota)
    return cid


def _race(n: int, fn) -> tuple[list, list, list]:
    ok, refused, other = [], [], []
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            fn(i)
            ok.append(i)
        except QuotaExceeded as e:
            refused.append(e.message)
        except Exception as e:          # pragma: no cover - shows up in the assertion
            other.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ok, refused, other


def test_concurrent_reservations_never_overspend_a_credential(platform):
    a = platform.accounts.create("xiaoming")                  # no account quota at all
    cid = _key(platform, a.id, quota_chars_per_day=70)
    q = platform.quota
    ok, refused, other = _race(40, lambda i: q.reserve(a.id, f"r{i}", chars=10, credential_id=cid))
    assert other == []
    assert len(ok) == 7 and len(refused) == 33
    assert set(refused) == {"this credential's daily quota exceeded"}
    st = q.credential_status(cid)
    assert (st.chars_limit, st.chars_reserved, st.chars_used) == (70, 70, 0)
    assert q.status(a.id).chars_reserved == 70               # the account counted the same holds
    # Settling frees what was not used, on both.
    for i in ok[:3]:
        assert q.settle(f"r{i}", actual_chars=4, actual_tokens=2)
    st, acct = q.credential_status(cid), q.status(a.id)
    assert (st.chars_reserved, st.chars_used, st.tokens_used) == (40, 12, 6)
    assert (acct.chars_reserved, acct.chars_used, acct.tokens_used) == (40, 12, 6)
    q.reserve(a.id, "fits", chars=18, credential_id=cid)
    with pytest.raises(QuotaExceeded):
        q.reserve(a.id, "one-more", chars=1, credential_id=cid)


def test_concurrent_keys_of_one_account_never_overspend_the_account(platform):
    """Two keys with room of their own race for an account that fits fewer requests."""
    a = platform.accounts.create("shared", quota_tokens_per_day=50)
    k1, k2 = _key(platform, a.id, quota_tokens_per_day=40), _key(platform, a.id, quota_tokens_per_day=40)
    q = platform.quota
    ok, refused, other = _race(30, lambda i: q.reserve(a.id, f"t{i}", tokens=5,
                                                       credential_id=(k1, k2)[i % 2]))
    assert other == [] and len(ok) == 10
    held = {k: q.credential_status(k).tokens_reserved for k in (k1, k2)}
    assert sum(held.values()) == q.status(a.id).tokens_reserved == 50
    assert all(v <= 40 for v in held.values())


def test_the_tighter_quota_refuses_and_a_refusal_changes_nothing(platform):
    a = platform.accounts.create("tight", quota_chars_per_day=100)
    narrow = _key(platform, a.id, quota_chars_per_day=30)
    wide = _key(platform, a.id, quota_chars_per_day=1000)
    free = _key(platform, a.id)                               # none of its own
    q = platform.quota
    q.reserve(a.id, "n1", chars=30, credential_id=narrow)
    with pytest.raises(QuotaExceeded, match="credential"):
        q.reserve(a.id, "n2", chars=1, credential_id=narrow)
    q.reserve(a.id, "w1", chars=60, credential_id=wide)
    with pytest.raises(QuotaExceeded) as e:                    # the account binds, not the key
        q.reserve(a.id, "w2", chars=11, credential_id=wide)
    assert e.value.message == "daily quota exceeded" and e.value.reason == "daily"
    # Neither refusal left a hold behind, on either counter.
    assert q.status(a.id).chars_reserved == 90
    assert q.credential_status(wide).chars_reserved == 60 and q.credential_status(narrow).chars_reserved == 30
    q.reserve(a.id, "f1", chars=10, credential_id=free)
    assert q.credential_status(free).chars_limit is None and q.credential_status(free).chars_reserved == 10
    # Zero allows nothing, whatever the account has left.
    zero = _key(platform, a.id, quota_tokens_per_day=0)
    with pytest.raises(QuotaExceeded):
        q.reserve(a.id, "z", tokens=1, credential_id=zero)


def test_extend_holds_both_and_undoes_both(platform):
    a = platform.accounts.create("grow", quota_chars_per_day=500)
    cid = _key(platform, a.id, quota_chars_per_day=50)
    q = platform.quota
    q.reserve(a.id, "g", chars=20, credential_id=cid)
    assert q.extend("g", chars=30) is True
    assert q.extend("g", chars=1) is False                    # the credential is full
    assert q.status(a.id).chars_reserved == 50                # and the account grew back nothing
    assert q.credential_status(cid).chars_reserved == 50
    platform.settle_and_record("g", chars=45, tokens=9, reserved=True, account_id=a.id, credential_id=cid,
                               model="m", dialect="welm", generated_chars=45, status="ok")
    assert (q.credential_status(cid).chars_used, q.status(a.id).chars_used) == (45, 45)
    assert (q.credential_status(cid).chars_reserved, q.status(a.id).chars_reserved) == (0, 0)


def test_reconcile_gives_back_both(platform):
    a = platform.accounts.create("crash")
    cid = _key(platform, a.id, quota_tokens_per_day=10)
    q = platform.quota
    old = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    q.reserve(a.id, "dead", tokens=10, now=old, credential_id=cid)
    assert q.reconcile_stale(dt.timedelta(hours=1), usage=platform.usage) == 1
    day = q.today(old)
    assert q.credential_status(cid, day).tokens_reserved == 0 and q.status(a.id, day).tokens_reserved == 0


def test_a_credential_of_another_account_is_not_held(platform):
    a, b = platform.accounts.create("a"), platform.accounts.create("b")
    foreign = _key(platform, b.id, quota_chars_per_day=1)
    platform.quota.reserve(a.id, "x", chars=5, credential_id=foreign)
    assert platform.quota.credential_status(foreign).chars_reserved == 0
    assert platform.quota.release("x") is True


def test_rotation_shares_the_day_and_copies_the_quota(platform):
    a = platform.accounts.create("rot")
    old = _key(platform, a.id, quota_chars_per_day=40, quota_tokens_per_day=400)
    q = platform.quota
    q.reserve(a.id, "before", chars=25, credential_id=old)
    new = platform.key_scopes.rotate(old, grace=dt.timedelta(hours=1)).info.id
    scope = platform.key_scopes.get(new)
    assert (scope.quota_chars_per_day, scope.quota_tokens_per_day) == (40, 400)
    with pytest.raises(QuotaExceeded):                         # the grace period is not a second quota
        q.reserve(a.id, "after", chars=16, credential_id=new)
    q.reserve(a.id, "after", chars=15, credential_id=new)
    newer = platform.key_scopes.rotate(new, grace=dt.timedelta(0)).info.id
    assert q.credential_status(newer).chars_reserved == 40
    assert q.settle("before", 5, 1) and q.settle("after", 5, 1)
    st = q.credential_status(newer)
    assert (st.chars_used, st.chars_reserved) == (10, 0)


def test_scope_validates_quotas(platform):
    a = platform.accounts.create("v")
    cid = _key(platform, a.id)
    for bad in (-1, 1.5, True, "10", 2 ** 60):
        with pytest.raises(InvalidParam):
            platform.key_scopes.set(cid, quota_chars_per_day=bad)
    s = platform.key_scopes.set(cid, quota_chars_per_day=5, quota_tokens_per_day=0)
    assert (s.quota_chars_per_day, s.quota_tokens_per_day) == (5, 0)
    assert platform.key_scopes.set(cid, quota_chars_per_day=None).quota_chars_per_day is None
