"""The audit log: who changed what, when, with the values before and after (never secrets).

The rule, in one place: a change to an account, credential, service or the safety
lexicon made while an operation is `acting` (every admin API call, every local CLI
command) writes one audit_log row per changed object, in the SAME transaction as the
change, so the log cannot miss a change that committed nor keep one that rolled back.

  who     the admin API caller's account and credential, or "local CLI"
  what    the operation (`POST /admin/api/credentials/7/rotate`, `wharf keys rotate`),
          the object (type, id, the account it belongs to) and create | update | delete
  values  the columns that changed (all of them for a create / delete), minus secrets and
          bookkeeping (SKIP); the lexicon as its version, count and the terms added/removed

ORM writes are seen by a flush hook (the changes made through Session objects, tenancy's
ceilings included); the lexicon, written with Core, calls `record` itself. Changes made
outside any operation (serving requests: last_used_at, OAuth tokens, quota) are not
admin changes and are not logged.

Entries are listed newest first by id with a keyset cursor; a non-admin sees only the
entries about its own account's objects.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, event, insert, inspect, select
from sqlalchemy.orm import Session

from wharf.errors import InvalidParam
from wharf.platform.models import Account, AuditEntry, Credential, Service, utcnow
from wharf.platform.store import Store

LOCAL_CLI = "local CLI"
MAX_PAGE = 500
MAX_TERMS_SHOWN = 50
# Never logged: secrets (hashed or encrypted, still secrets) and what changes on its own.
SKIP = {"secret_hash", "secret_encrypted", "last_used_at", "updated_at"}
JSON_COLUMNS = {"allowed_models", "allowed_services"}
AUDITED = {Account: "account", Credential: "credential", Service: "service"}
_T = AuditEntry.__table__


@dataclass
class Operation:
    """One admin API call or CLI command. `actor` is filled in once the caller is known
    (the admin API authenticates inside the call)."""
    source: str
    actor: str                      # "credential" once identify()d, or LOCAL_CLI
    account_id: int | None = None
    credential_id: int | None = None

    def identify(self, principal) -> None:
        self.actor = "credential"
        self.account_id, self.credential_id = principal.account_id, principal.credential_id


_current: contextvars.ContextVar[Operation | None] = contextvars.ContextVar("wharf_audit_op", default=None)


@contextlib.contextmanager
def acting(op: Operation) -> Iterator[Operation]:
    """Changes made inside are logged as `op`'s (a context variable: threads started by
    Starlette's threadpool inherit it)."""
    token = _current.set(op)
    try:
        yield op
    finally:
        _current.reset(token)


def current() -> Operation | None:
    return _current.get()


def _plain(value):
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def record(conn: Connection, *, object_type: str, object_id: int | None, account_id: int | None,
           action: str, before: dict | None, after: dict | None) -> None:
    """Write one entry on `conn` (the change's own transaction), if an operation is acting."""
    op = _current.get()
    if op is None:
        return
    conn.execute(insert(_T).values(
        created_at=utcnow(), actor=op.actor, actor_account_id=op.account_id,
        actor_credential_id=op.credential_id, source=op.source[:256], object_type=object_type,
        object_id=object_id, account_id=account_id, action=action,
        before=None if before is None else json.dumps(before, ensure_ascii=False, default=str),
        after=None if after is None else json.dumps(after, ensure_ascii=False, default=str)))


def lexicon_change(old_terms: list[str] | None, old_version: int | None, new_terms: list[str],
                   new_version: int) -> tuple[dict, dict]:
    """A lexicon replacement's before/after: versions, counts and what was added / removed
    (at most MAX_TERMS_SHOWN of each: a lexicon may hold 100 000 terms)."""
    old = old_terms or []
    added = sorted(set(new_terms) - set(old))
    removed = sorted(set(old) - set(new_terms))
    return ({"version": old_version, "count": len(old)},
            {"version": new_version, "count": len(new_terms), "added": added[:MAX_TERMS_SHOWN],
             "removed": removed[:MAX_TERMS_SHOWN], "added_count": len(added), "removed_count": len(removed)})


def _columns(obj) -> list[str]:
    return [a.key for a in inspect(obj).mapper.column_attrs if a.key not in SKIP]


def _value(key: str, value):
    if key in JSON_COLUMNS and isinstance(value, str):
        return json.loads(value)             # an allow-list reads as the list it is
    return _plain(value)


def _values(obj) -> dict:
    return {k: _value(k, getattr(obj, k)) for k in _columns(obj)}


def _changes(obj) -> tuple[dict, dict]:
    state = inspect(obj)
    before, after = {}, {}
    for k in _columns(obj):
        h = state.attrs[k].history
        if not h.has_changes():
            continue
        old = h.deleted[0] if h.deleted else None
        new = h.added[0] if h.added else None
        if old != new:
            before[k], after[k] = _value(k, old), _value(k, new)
    return before, after


def _owner(obj) -> int | None:
    return obj.id if isinstance(obj, Account) else obj.account_id


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx) -> None:
    # after_flush: ids of new rows are known and attribute history is still there.
    if _current.get() is None:
        return
    entries = []
    for obj in session.new:
        if type(obj) in AUDITED:
            entries.append((obj, "create", None, _values(obj)))
    for obj in session.dirty:
        if type(obj) in AUDITED and session.is_modified(obj, include_collections=False):
            before, after = _changes(obj)
            if after or before:
                entries.append((obj, "update", before, after))
    for obj in session.deleted:
        if type(obj) in AUDITED:
            entries.append((obj, "delete", _values(obj), None))
    conn = session.connection()
    for obj, action, before, after in entries:
        record(conn, object_type=AUDITED[type(obj)], object_id=obj.id, account_id=_owner(obj),
               action=action, before=before, after=after)


# -- reading ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditView:
    id: int
    created_at: dt.datetime
    actor: str                      # "credential" (see actor_*) | "local CLI"
    actor_account_id: int | None
    actor_credential_id: int | None
    source: str
    object_type: str                # account | credential | service | lexicon
    object_id: int | None
    account_id: int | None          # the account the object belongs to (None: the lexicon)
    action: str                     # create | update | delete
    before: dict | None
    after: dict | None

    @classmethod
    def of(cls, r) -> AuditView:
        return cls(id=r.id, created_at=r.created_at, actor=r.actor, actor_account_id=r.actor_account_id,
                   actor_credential_id=r.actor_credential_id, source=r.source, object_type=r.object_type,
                   object_id=r.object_id, account_id=r.account_id, action=r.action,
                   before=None if r.before is None else json.loads(r.before),
                   after=None if r.after is None else json.loads(r.after))

    def to_dict(self) -> dict:
        return asdict(self)


class AuditLog:
    def __init__(self, store: Store):
        self.store = store

    def page(self, *, account_id: int | None = None, object_type: str | None = None,
             object_id: int | None = None, cursor: str | None = None,
             limit: int = 50) -> tuple[list[AuditView], str | None]:
        """Newest first; `account_id` None: every entry (admins). The cursor is the last id."""
        limit = max(1, min(int(limit), MAX_PAGE))
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
        if account_id is not None:
            q = q.where(AuditEntry.account_id == account_id)
        if object_type is not None:
            q = q.where(AuditEntry.object_type == object_type)
        if object_id is not None:
            q = q.where(AuditEntry.object_id == object_id)
        if cursor:
            if not cursor.isdigit() or len(cursor) > 18:
                raise InvalidParam("cursor is not one this API gave out (use next_cursor as is)", param="cursor")
            q = q.where(AuditEntry.id < int(cursor))
        with self.store.read() as s:
            rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return [AuditView.of(r) for r in rows], (str(rows[-1].id) if more else None)
