"""Store, migrations, accounts, credentials, services: real SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import stat

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from tests.platform.conftest import MODELS, file_bytes
from wharf.errors import AuthError, Conflict, InvalidParam, NotFound, PermissionDenied
from wharf.platform.accounts import ensure_admin
from wharf.platform.auth import Principal
from wharf.platform.models import Account, Base, Credential, Service
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

TABLES = {"accounts", "credentials", "access_tokens", "services", "usage_records", "quota_usage",
          "quota_reservations", "console_sessions", "safety_lexicon", "alembic_version"}


def test_migrations_on_empty_database_match_models(store):
    assert TABLES <= set(store.table_names())
    with store.engine.connect() as c:
        # the newest revision (others chain on; 0004 is the services' url_suffix)
        from alembic.script import ScriptDirectory

        from wharf.platform.store import MIGRATIONS_DIR
        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        assert head >= "0004" and c.execute(text("select version_num from alembic_version")).scalar() == head
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_open_twice_is_idempotent(db_url):
    Store.open(db_url).close()
    s = Store.open(db_url)
    assert TABLES <= set(s.table_names())
    s.close()


def test_upgrade_from_0001_keeps_data(db_url):
    """An install made before 0002 (console sessions, shared lexicon) upgrades in place."""
    from sqlalchemy import create_engine

    from wharf.platform.store import upgrade

    engine = create_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as c:
        assert "console_sessions" not in Store(engine).table_names()
        c.execute(text("insert into accounts (name, status, is_admin, created_at) "
                       "values ('old', 'active', false, '2026-01-01 00:00:00')"))
    engine.dispose()
    s = Store.open(db_url)
    assert TABLES <= set(s.table_names())
    with s.read() as session:
        assert session.scalar(select(Account.name)) == "old"
    s.close()


def test_upgrade_from_0002_keeps_what_zero_limits_allowed(db_url):
    """0003: rpm/tpm/qps/max_concurrency = 0 meant "no limit" and now means "nothing
    allowed": stored zeros are rewritten so that nobody's limits change (credentials and
    services: NULL; accounts, where NULL is the platform default: the largest value);
    daily quotas (0 already meant nothing) are kept."""
    from sqlalchemy import create_engine

    from wharf.platform.store import upgrade

    engine = create_engine(db_url)
    upgrade(engine, "0002")
    with engine.begin() as c:
        c.execute(text("insert into accounts (id, name, status, is_admin, created_at, rpm, tpm, qps, "
                       "max_concurrency, quota_chars_per_day, quota_tokens_per_day) values "
                       "(1, 'zero', 'active', false, '2026-01-01 00:00:00', 0, 0, 5, 0, 0, 0)"))
        c.execute(text("insert into credentials (id, account_id, kind, label, public_id, created_at, rpm, tpm, "
                       "qps, max_concurrency) values (1, 1, 'api_key', '', 'wk-x', '2026-01-01 00:00:00', "
                       "0, 7, 0, 0)"))
        c.execute(text("insert into services (id, account_id, endpoint, model, kind, description, rpm, tpm, "
                       "created_at, updated_at) values (1, 1, 'ep', 'm', 'chat', '', 0, 3, "
                       "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    engine.dispose()
    s = Store.open(db_url)
    with s.read() as session:
        a, c, v = session.get(Account, 1), session.get(Credential, 1), session.get(Service, 1)
        assert (a.rpm, a.tpm, a.qps, a.max_concurrency) == (2**31 - 1, 2**31 - 1, 5, 2**31 - 1)
        assert (a.quota_chars_per_day, a.quota_tokens_per_day) == (0, 0)
        assert (a.key_rpm, a.service_tpm) == (None, None)
        assert (c.rpm, c.tpm, c.qps, c.max_concurrency) == (None, 7, None, None)
        assert (v.rpm, v.tpm) == (None, 3)
    s.close()


def test_sqlite_pragmas(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'x' / 'w.db'}")     # creates the folder too
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    s.close()


def test_secret_key_file_created_0600(tmp_path):
    box = SecretBox.load(tmp_path, env={})
    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = SecretBox.load(tmp_path, env={})
    assert again.decrypt(box.encrypt("hello")) == "hello"
    env_key = SecretBox.generate_key()
    assert SecretBox.load(tmp_path, env={"WHARF_SECRET_KEY": env_key}).decrypt(
        SecretBox(env_key).encrypt("x")) == "x"
    assert "hidden" in repr(box)


def test_account_crud(platform):
    acc = platform.accounts
    a = acc.create("alice", quota_chars_per_day=1000, rpm=60)
    assert (a.name, a.status, a.is_admin, a.quota_chars_per_day, a.rpm) == ("alice", "active", False, 1000, 60)
    assert acc.get(a.id) == a and acc.get_by_name("alice") == a and acc.resolve(str(a.id)) == a
    with pytest.raises(Conflict):
        acc.create("alice")
    assert acc.disable(a.id).status == "disabled"
    assert acc.enable(a.id).status == "active"
    assert acc.update_limits(a.id, rpm=None, tpm=5).tpm == 5
    assert acc.get(a.id).rpm is None
    assert [x.name for x in acc.list()] == ["alice"]
    with pytest.raises(NotFound):
        acc.get(9999)
    for bad in ("", "x" * 65, "bad name", "-x", None):
        with pytest.raises(InvalidParam):
            acc.create(bad)
    with pytest.raises(InvalidParam):
        acc.create("bob", rpm=-1)
    with pytest.raises(InvalidParam):
        acc.create("bob", colour=1)
    assert acc.count() == 1            # nothing half-written


def test_ensure_admin_once(platform):
    key = ensure_admin(platform.store)
    assert key and key.startswith("wk-")
    assert ensure_admin(platform.store) is None
    p = platform.authenticator.bearer(key)
    assert p.is_admin and p.account_name == "admin"


@pytest.mark.parametrize("kind", ["api_key", "qianfan_app", "qianfan_iam", "sensenova"])
def test_credentials_create_list_revoke(platform, kind):
    a = platform.accounts.create("alice")
    issued = platform.credentials.create(a.id, kind, label="ci", rpm=10)
    assert issued.secret and issued.public_id
    assert issued.secret not in repr(issued)
    listed = platform.credentials.list(a.id)
    assert [c.id for c in listed] == [issued.info.id] and listed[0].rpm == 10
    assert issued.secret not in repr(listed) and issued.secret not in str(listed[0].to_dict())
    # The secret is stored hashed or encrypted, never in plain text.
    with platform.store.read() as s:
        row = s.get(Credential, issued.info.id)
        assert issued.secret not in (row.secret_hash or "") + (row.secret_encrypted or "")
    assert platform.credentials.revoke(issued.info.id).revoked_at is not None
    assert platform.credentials.list(a.id, include_revoked=False) == []


def test_credentials_bad_input(platform):
    a = platform.accounts.create("alice")
    with pytest.raises(InvalidParam):
        platform.credentials.create(a.id, "password")
    with pytest.raises(NotFound):
        platform.credentials.create(4242, "api_key")
    with pytest.raises(InvalidParam):
        platform.credentials.create(a.id, "api_key", label="x" * 129)
    with pytest.raises(NotFound):
        platform.credentials.revoke(4242)
    assert platform.credentials.list() == []


def test_secrets_not_in_sqlite_file(sqlite_platform, tmp_path):
    p = sqlite_platform
    a = p.accounts.create("alice")
    secrets_ = [p.credentials.create(a.id, k).secret for k in ("api_key", "qianfan_app", "qianfan_iam",
                                                              "sensenova")]
    tok, _ = p.authenticator.issue_qianfan_token(
        *[(c.public_id) for c in p.credentials.list(a.id) if c.kind == "qianfan_app"],
        secrets_[1])
    # A console sign-in stores the API key (encrypted) and the session id (hashed).
    console_key = p.credentials.create(a.id, "api_key", label="console").secret
    sid, _ = p.console_sessions.create(console_key, a.id, [])
    data = file_bytes(tmp_path / "wharf.db")
    assert len(data) > 1000 and b"alice" in data          # we are reading the right file
    for sec in secrets_ + [tok, console_key, sid]:
        assert sec.encode() not in data


def test_last_used_is_recorded(platform):
    a = platform.accounts.create("alice")
    key = platform.credentials.create(a.id, "api_key").secret
    cid = platform.credentials.list(a.id)[0].id
    assert platform.credentials.get(cid).last_used_at is None
    platform.authenticator.bearer(key)
    first = platform.credentials.get(cid).last_used_at
    assert first is not None
    platform.authenticator.bearer(key)                     # throttled: no second write
    assert platform.credentials.get(cid).last_used_at == first


def _principal(acc) -> Principal:
    return Principal(account_id=acc.id, account_name=acc.name, is_admin=acc.is_admin, credential_id=0,
                     credential_kind="api_key")


def test_services_crud_and_resolve(platform):
    a = platform.accounts.create("alice")
    b = platform.accounts.create("bob")
    svc = platform.services
    s1 = svc.create(a.id, "test1", "Yi-34B-Chat", "chat", "my chat", rpm=5)
    s2 = svc.create(b.id, "test1", "xl", "completions")           # both may choose test1
    for s in (s1, s2):
        assert re.fullmatch(r"[a-z0-9]{8}_test1", s.endpoint) and s.url_suffix == "test1"
    assert s1.endpoint != s2.endpoint
    assert svc.get(s1.id) == s1 and svc.get_by_endpoint(s2.endpoint) == s2
    assert [s.endpoint for s in svc.list(a.id)] == [s1.endpoint]
    assert len(svc.list()) == 2
    assert svc.resolve_service(_principal(a), s1.endpoint, "chat") == s1
    with pytest.raises(NotFound) as e:
        svc.resolve_service(_principal(a), "test1", "chat")          # the typed part alone is no endpoint
    assert e.value.reason == "service"
    with pytest.raises(PermissionDenied):
        svc.resolve_service(_principal(a), s2.endpoint, "completions")
    with pytest.raises(NotFound) as e:
        svc.resolve_service(_principal(a), s1.endpoint, "completions")
    assert e.value.reason == "service_kind"
    up = svc.update(s1.id, model="tiny-model", description="d2", rpm=None)
    assert (up.model, up.description, up.rpm, up.endpoint) == ("tiny-model", "d2", None, s1.endpoint)
    assert up.updated_at >= s1.updated_at
    svc.delete(s1.id)
    with pytest.raises(NotFound):
        svc.get(s1.id)
    with pytest.raises(NotFound):
        svc.delete(s1.id)


@pytest.mark.parametrize("endpoint", ["", "a", "UPPER", "a b", "x" * 21, "../etc", "_lead", "trail-", "a/b",
                                      "a.b", None, "é", "ab\n", 12])
def test_service_bad_endpoint(platform, endpoint):
    """What the user types follows Qianfan CreateService's urlSuffix: 2-20 of a-z 0-9 _ -,
    a letter or digit first and last."""
    a = platform.accounts.create("alice")
    with pytest.raises(InvalidParam) as e:
        platform.services.create(a.id, endpoint, "xl", "chat")
    assert e.value.param == "endpoint" and "2-20 characters" in e.value.message
    assert platform.services.list() == []


@pytest.mark.parametrize("suffix", ["ab", "x" * 20, "my-chat_2", "0a", "a-_-b"])
def test_service_good_url_suffix(platform, suffix):
    a = platform.accounts.create("alice")
    s = platform.services.create(a.id, suffix, "xl", "chat")
    assert s.endpoint.endswith("_" + suffix) and len(s.endpoint) == 9 + len(suffix)


def test_upgrade_from_0003_keeps_endpoints(db_url):
    """0004: services made before prefixes keep their endpoints as clients call them."""
    from sqlalchemy import create_engine

    from wharf.platform.store import upgrade

    engine = create_engine(db_url)
    upgrade(engine, "0003")
    with engine.begin() as c:
        c.execute(text("insert into accounts (id, name, status, is_admin, created_at) "
                       "values (1, 'old', 'active', false, '2026-01-01 00:00:00')"))
        c.execute(text("insert into services (id, account_id, endpoint, model, kind, description, "
                       "created_at, updated_at) values (1, 1, 'my.old-endpoint', 'xl', 'chat', '', "
                       "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    engine.dispose()
    s = Store.open(db_url)
    from wharf.platform.services import Services
    services = Services(s)
    old = services.get_by_endpoint("my.old-endpoint")
    assert (old.id, old.url_suffix) == (1, None)
    new = services.create(1, "test1", "xl", "chat")
    assert new.endpoint.endswith("_test1") and new.url_suffix == "test1"
    s.close()


def test_service_bad_input_nothing_written(platform):
    a = platform.accounts.create("alice")
    svc = platform.services
    svc.create(a.id, "taken", "xl", "chat")
    with pytest.raises(InvalidParam) as e:
        svc.create(a.id, "m1", "no-such-model", "chat")
    assert e.value.param == "model"
    with pytest.raises(InvalidParam):
        svc.create(a.id, "m2", "xl", "embeddings")
    with pytest.raises(InvalidParam):
        svc.create(a.id, "m3", "xl", "chat", "d" * 1025)
    with pytest.raises(NotFound):
        svc.create(4242, "m4", "xl", "chat")
    with pytest.raises(InvalidParam):
        svc.update(svc.list()[0].id, model="no-such-model")
    with pytest.raises(InvalidParam):
        svc.update(svc.list()[0].id, endpoint="other")
    with platform.store.read() as s:
        assert s.scalar(select(func.count(Service.id))) == 1
        assert s.scalar(select(Service.model)) == "xl"
    assert sorted(MODELS)                            # the check used our callable


def test_disable_and_revoke_take_effect_immediately(platform):
    a = platform.accounts.create("alice")
    key = platform.credentials.create(a.id, "api_key").secret
    assert platform.authenticator.bearer(key).account_id == a.id
    platform.accounts.disable(a.id)
    with pytest.raises(AuthError) as e:
        platform.authenticator.bearer(key)
    assert e.value.reason == "disabled"
    platform.accounts.enable(a.id)
    assert platform.authenticator.bearer(key).account_id == a.id
    platform.credentials.revoke(platform.credentials.list(a.id)[0].id)
    with pytest.raises(AuthError) as e:
        platform.authenticator.bearer(key)
    assert e.value.reason == "revoked"


def test_foreign_keys_enforced(platform):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with platform.store.write() as s:
            s.add(Service(account_id=999, endpoint="x", model="xl", kind="chat", description=""))
    with platform.store.read() as s:
        assert s.scalar(select(func.count(Account.id))) == 0


def test_caps_and_ceilings_hold_under_concurrent_writes(platform):
    """The per-account caps count and insert under the account row's lock (FOR UPDATE on
    PostgreSQL, BEGIN IMMEDIATE on SQLite): 12 concurrent creates against a cap of 4 make
    exactly 4; and a tenant's concurrent raises never pass the ceiling."""
    import concurrent.futures as cf

    from wharf.platform.credentials import Credentials
    from wharf.platform.services import Services

    a = platform.accounts.create("capped")
    tenant = Principal(account_id=a.id, account_name="capped", is_admin=False, credential_id=0,
                       credential_kind="api_key")
    creds = Credentials(platform.store, platform.secret_box, max_per_account=4)
    svcs = Services(platform.store, MODELS.__contains__, max_per_account=2)

    def one(i):
        try:
            creds.create(a.id, "api_key", label=f"k{i}", actor=tenant)
            return "made"
        except PermissionDenied:
            return "refused"
    with cf.ThreadPoolExecutor(12) as pool:
        got = sorted(pool.map(one, range(12)))
    assert got == ["made"] * 4 + ["refused"] * 8
    assert len(creds.list(a.id, include_revoked=False)) == 4

    def svc(i):
        try:
            svcs.create(a.id, f"cap-{i}", "xl", "chat", actor=tenant)
            return "made"
        except PermissionDenied:
            return "refused"
    with cf.ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(svc, range(6))) == ["made"] * 2 + ["refused"] * 4

    cid = creds.list(a.id)[0].id
    creds.update_limits(cid, rpm=10)                              # the operator: ceiling 10
    assert platform.accounts.get(a.id).key_rpm == 10
    with pytest.raises(PermissionDenied):
        creds.update_limits(cid, rpm=None, actor=tenant)
    assert creds.update_limits(cid, rpm=3, actor=tenant).rpm == 3
    assert creds.update_limits(cid, rpm=10, actor=tenant).rpm == 10
    with pytest.raises(PermissionDenied):
        creds.update_limits(cid, rpm=11, actor=tenant)
    with pytest.raises(InvalidParam):
        creds.update_limits(cid, rpm=2**31)                       # the column's range
