"""The platform services the console calls in process: the usage series behind its charts
(UsageLog.daily_series) and the tokens its playground signs with one of the user's own
credentials (Credentials.own_secret, Authenticator.client_token)."""

from __future__ import annotations

import datetime as dt

import pytest

from wharf.errors import InvalidParam, NotFound
from wharf.platform.auth import sign_sensenova_jwt

UTC = dt.timezone.utc


def test_daily_series_per_model_and_service(sqlite_platform):
    p = sqlite_platform
    a, b = p.accounts.create("alice"), p.accounts.create("bob")
    svc = p.services.create(a.id, "ep1", "xl", "chat")
    gone = p.services.create(a.id, "ep2", "xl", "chat")
    t0 = dt.datetime(2025, 3, 1, 4, 0, tzinfo=UTC)
    u = p.usage
    u.record_usage(request_id="r1", account_id=a.id, service_id=svc.id, model="xl", dialect="qianfan",
                   prompt_tokens=5, completion_tokens=7, generated_chars=20, created_at=t0)
    u.record_usage(request_id="r2", account_id=a.id, service_id=svc.id, model="xl", dialect="qianfan",
                   prompt_tokens=1, completion_tokens=2, generated_chars=3, created_at=t0)
    u.record_usage(request_id="r3", account_id=a.id, model="tiny-model", dialect="openai",
                   prompt_tokens=4, created_at=t0 + dt.timedelta(days=1))
    u.record_usage(request_id="r4", account_id=a.id, service_id=gone.id, model="xl", dialect="qianfan",
                   created_at=t0 + dt.timedelta(days=1))
    u.record_usage(request_id="r5", account_id=b.id, model="xl", dialect="welm", created_at=t0)
    u.record_usage(request_id="old", account_id=a.id, model="xl", dialect="welm",
                   created_at=t0 - dt.timedelta(days=5))
    p.services.delete(gone.id)
    day1, day2 = dt.date(2025, 3, 1), dt.date(2025, 3, 2)
    series = u.daily_series(a.id, day1, day2)
    assert [r["day"] for r in series["model"]] == ["2025-03-01", "2025-03-02", "2025-03-02"]  # oldest first
    assert sorted(series["model"], key=lambda r: (r["day"], r["key"])) == [
        {"day": "2025-03-01", "key": "xl", "requests": 2, "tokens": 15, "prompt_tokens": 6,
         "completion_tokens": 9, "chars": 23},
        {"day": "2025-03-02", "key": "tiny-model", "requests": 1, "tokens": 4, "prompt_tokens": 4,
         "completion_tokens": 0, "chars": 0},
        {"day": "2025-03-02", "key": "xl", "requests": 1, "tokens": 0, "prompt_tokens": 0,
         "completion_tokens": 0, "chars": 0}]
    by_service = {(r["day"], r["key"]): r["requests"] for r in series["service"]}
    assert by_service == {("2025-03-01", svc.endpoint): 2, ("2025-03-02", "(no service)"): 1,
                          ("2025-03-02", f"#{gone.id} (deleted)"): 1}
    every = u.daily_series(None, day1, day1)                       # every account: bob's too
    assert [(r["key"], r["requests"]) for r in every["model"]] == [("xl", 3)]
    assert u.daily_series(b.id, day2, day2) == {"model": [], "service": []}


def test_own_secret_only_of_the_accounts_active_credentials_of_that_kind(sqlite_platform):
    p = sqlite_platform
    a, b = p.accounts.create("alice"), p.accounts.create("bob")
    mine = p.credentials.create(a.id, "sensenova")
    assert p.credentials.own_secret(a.id, mine.info.id, "sensenova") == (mine.public_id, mine.secret)
    assert p.credentials.own_secret(a.id, str(mine.info.id), "sensenova") == (mine.public_id, mine.secret)
    theirs = p.credentials.create(b.id, "sensenova")
    other_kind = p.credentials.create(a.id, "qianfan_app")
    revoked = p.credentials.create(a.id, "sensenova")
    p.credentials.revoke(revoked.info.id)
    for ref in (theirs.info.id, other_kind.info.id, revoked.info.id, None, "x", "²", "9" * 40, 10**6):
        with pytest.raises(NotFound, match="pick one of your active sensenova credentials"):
            p.credentials.own_secret(a.id, ref, "sensenova")


def test_client_token_is_what_the_dialects_accept(sqlite_platform):
    p = sqlite_platform
    a = p.accounts.create("alice")
    app = p.credentials.create(a.id, "qianfan_app")
    nova = p.credentials.create(a.id, "sensenova")
    auth = p.authenticator
    assert auth.qianfan_access_token(auth.client_token(a.id, app.info.id, "qianfan_app")).account_id == a.id
    assert auth.sensenova_jwt(auth.client_token(a.id, nova.info.id, "sensenova")).account_id == a.id
    with pytest.raises(NotFound):
        auth.client_token(a.id, nova.info.id, "qianfan_app")
    with pytest.raises(InvalidParam):
        auth.client_token(a.id, nova.info.id, "api_key")


def test_sign_sensenova_jwt_as_the_sdk_does(sqlite_platform):
    p = sqlite_platform
    a = p.accounts.create("alice")
    nova = p.credentials.create(a.id, "sensenova")
    token = sign_sensenova_jwt(nova.public_id, nova.secret, now=1_000_000)
    assert p.authenticator.sensenova_jwt(token, now=1_000_000 + 1799).account_id == a.id
    with pytest.raises(Exception, match="expired"):
        p.authenticator.sensenova_jwt(token, now=1_000_000 + 1800 + 6)
