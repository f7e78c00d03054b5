"""Console sign-in sessions in the shared store (real SQLite and PostgreSQL): create, find,
drop, idle expiry, what is stored (a hash, a Fernet token), CASCADE; and the console's own
routes over real HTTP on a bare app, for hostile cookies."""

from __future__ import annotations

import datetime as dt
import hashlib

import httpx
import pytest
from sqlalchemy import delete, func, select

from tests.platform.conftest import LiveServer, file_bytes
from wharf.platform.console_sessions import SESSION_TTL_S, TOUCH_INTERVAL_S, ConsoleSessions
from wharf.platform.models import Account, ConsoleSession, utcnow


def _rows(platform) -> list[ConsoleSession]:
    with platform.store.read() as s:
        return list(s.scalars(select(ConsoleSession)))


@pytest.fixture
def alice(platform):
    acct = platform.accounts.create("alice")
    return acct, platform.credentials.create(acct.id, "api_key").secret


def test_create_get_drop(platform, alice):
    acct, key = alice
    cs = platform.console_sessions
    sid, sess = cs.create(key, acct.id, [])
    got = cs.get(sid)
    assert (got.key, got.csrf, got.account_id) == (key, sess.csrf, acct.id)
    assert key not in repr(got) and sess.csrf not in repr(got)
    # Another process on the same store (another replica) sees it too.
    other = ConsoleSessions(platform.store, platform.secret_box)
    assert other.get(sid).key == key
    other.drop(sid)
    assert cs.get(sid) is None and _rows(platform) == []
    cs.drop(sid)                                   # dropping twice is harmless
    cs.drop(None)


def test_new_id_every_sign_in_and_old_ones_destroyed(platform, alice):
    acct, key = alice
    cs = platform.console_sessions
    first, s1 = cs.create(key, acct.id, [])
    second, s2 = cs.create(key, acct.id, [first, "planted-by-attacker"])
    assert first != second and s1.csrf != s2.csrf
    assert cs.get(first) is None and cs.get(second) is not None
    assert len(_rows(platform)) == 1


def test_stored_id_is_a_hash_and_key_is_encrypted(platform, alice):
    acct, key = alice
    sid, sess = platform.console_sessions.create(key, acct.id, [])
    (row,) = _rows(platform)
    assert row.sid_hash == hashlib.sha256(sid.encode()).hexdigest()
    stored = " ".join(str(getattr(row, c.key)) for c in ConsoleSession.__table__.columns)
    assert sid not in stored and key not in stored
    assert platform.secret_box.decrypt(row.key_encrypted) == key       # Fernet, the server's key


def test_sqlite_file_holds_neither_session_id_nor_key(sqlite_platform, tmp_path):
    acct = sqlite_platform.accounts.create("alice")
    key = sqlite_platform.credentials.create(acct.id, "api_key").secret
    sid, _ = sqlite_platform.console_sessions.create(key, acct.id, [])
    data = file_bytes(tmp_path / "wharf.db")
    assert hashlib.sha256(sid.encode()).hexdigest().encode() in data     # the right file, the row written
    assert sid.encode() not in data and key.encode() not in data


def test_idle_expiry(platform, alice):
    acct, key = alice
    cs = platform.console_sessions
    t0 = utcnow()
    sid, _ = cs.create(key, acct.id, [], now=t0)
    # Used within the TTL: still there, and each use past the touch interval moves last_seen.
    t1 = t0 + dt.timedelta(seconds=SESSION_TTL_S - 10)
    assert cs.get(sid, now=t1) is not None
    t2 = t1 + dt.timedelta(seconds=SESSION_TTL_S - 10)
    assert cs.get(sid, now=t2) is not None
    # Idle for longer than the TTL: refused...
    assert cs.get(sid, now=t2 + dt.timedelta(seconds=SESSION_TTL_S + 1)) is None
    assert len(_rows(platform)) == 1
    # ...and deleted by the next sign-in (anyone's).
    cs.create(key, acct.id, [], now=t2 + dt.timedelta(seconds=SESSION_TTL_S + 2))
    assert len(_rows(platform)) == 1 and cs.get(sid) is None


def test_last_seen_written_only_when_older_than_the_touch_interval(platform, alice):
    acct, key = alice
    cs = platform.console_sessions
    t0 = utcnow()
    sid, _ = cs.create(key, acct.id, [], now=t0)
    cs.get(sid, now=t0 + dt.timedelta(seconds=TOUCH_INTERVAL_S - 1))
    assert _rows(platform)[0].last_seen == t0
    t1 = t0 + dt.timedelta(seconds=TOUCH_INTERVAL_S + 1)
    assert cs.get(sid, now=t1).last_seen == t1
    assert _rows(platform)[0].last_seen == t1


def test_account_deleted_deletes_its_sessions(platform, alice):
    acct, key = alice
    bob = platform.accounts.create("bob")
    bob_key = platform.credentials.create(bob.id, "api_key").secret
    mine, _ = platform.console_sessions.create(key, acct.id, [])
    theirs, _ = platform.console_sessions.create(bob_key, bob.id, [])
    with platform.store.write() as s:
        s.execute(delete(Account).where(Account.id == acct.id))
    with platform.store.read() as s:
        assert s.scalar(select(func.count()).select_from(ConsoleSession)) == 1
    assert platform.console_sessions.get(mine) is None
    assert platform.console_sessions.get(theirs).account_id == bob.id


def test_sign_in_racing_the_account_deletion_is_an_auth_error(platform, alice):
    # The key was checked, then the account went before the session row was written.
    from wharf.errors import AuthError

    acct, key = alice
    with platform.store.write() as s:
        s.execute(delete(Account).where(Account.id == acct.id))
    with pytest.raises(AuthError):
        platform.console_sessions.create(key, acct.id, [])


@pytest.mark.parametrize("bad", ["", "x", "garbage-🙂-\x00", "x" * 100_000, None, 42])
def test_garbage_ids_are_not_found(platform, alice, bad):
    acct, key = alice
    sid, _ = platform.console_sessions.create(key, acct.id, [])
    assert platform.console_sessions.get(bad) is None
    assert platform.console_sessions.find([bad, sid])[0] == sid     # a bad value does not hide a good one
    platform.console_sessions.drop(bad)
    assert platform.console_sessions.get(sid) is not None


def test_a_session_under_another_secret_key_is_signed_out_not_an_error(platform, alice):
    from wharf.platform.secretbox import SecretBox

    acct, key = alice
    sid, _ = platform.console_sessions.create(key, acct.id, [])
    elsewhere = ConsoleSessions(platform.store, SecretBox(SecretBox.generate_key()))
    assert elsewhere.get(sid) is None


# -- the console's routes over real HTTP (the console router on a bare app) ----------------

@pytest.fixture
def console(platform, alice):
    from fastapi import FastAPI

    from wharf.console import build_console_router

    app = FastAPI()
    app.state.platform = platform
    app.include_router(build_console_router())
    with LiveServer(app) as srv:
        yield srv.url, alice[1]


def _sign_in(url: str, key: str) -> tuple[str, str]:
    r = httpx.post(url + "/console/session", json={"api_key": key})
    assert r.status_code == 200, r.text
    return r.cookies["wharf_console"], r.json()["csrf"]


def _usage(url: str, cookie_header: str) -> httpx.Response:
    return httpx.get(url + "/console/api/usage-series", headers={"Cookie": cookie_header})


def test_console_session_round_trip_and_sign_out(console):
    url, key = console
    sid, csrf = _sign_in(url, key)
    assert _usage(url, f"wharf_console={sid}").status_code == 200
    r = httpx.delete(url + "/console/session", headers={"Cookie": f"wharf_console={sid}"})
    assert r.status_code == 403                                  # sign-out needs the CSRF token
    r = httpx.delete(url + "/console/session", headers={"Cookie": f"wharf_console={sid}", "X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json() == {"signed_in": False}
    assert _usage(url, f"wharf_console={sid}").status_code == 401


@pytest.mark.parametrize("cookie", [
    "wharf_console=garbage",
    "wharf_console=" + "A" * 3000,                               # oversized (within the header limit)
    'wharf_console="\\x00\\xff;;=="; other=1',
    "wharf_console=%00%ff%zz",
    "wharf_console=é€🙂",
    "; ".join(["wharf_console=dup"] * 300),                      # duplicated, many times
    "wharf_console=",
    "=wharf_console; wharf_console",
])
def test_hostile_cookie_is_a_clear_401(console, cookie):
    url, _ = console
    r = httpx.get(url + "/console/api/usage-series", headers={"Cookie": cookie.encode("utf-8")})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "auth_error"
    assert httpx.get(url + "/console/session", headers={"Cookie": cookie.encode("utf-8")}).json() == \
        {"signed_in": False}


def test_duplicated_cookie_with_the_real_one_among_them(console):
    """A planted value (e.g. Path=/ from a sibling origin) beside the real one: the real one
    still works, whichever comes first."""
    url, key = console
    sid, _ = _sign_in(url, key)
    assert _usage(url, f"wharf_console=planted; wharf_console={sid}").status_code == 200
    assert _usage(url, f"wharf_console={sid}; wharf_console=planted").status_code == 200
