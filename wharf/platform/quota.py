"""Daily quotas, per account and per credential: reserve before generation, settle after.

One rule for both: a holder's day has counters (used, reserved; characters and tokens),
and a reservation grows them only if used + reserved + amount stays within the holder's
limit. A request holds the day of its account AND of its credential (when it has one):
both must have room, so the tighter one refuses, and a reservation that fails on either
changes neither (one transaction). Credentials keep their counters in
credential_quota_usage, accounts in quota_usage; `_Counters` builds the same statements
over either table, so the rule exists once.

reserve() is one write transaction whose check-and-add is a conditional UPDATE per
holder (the limit in the WHERE clause). On PostgreSQL the UPDATE takes the row lock and
re-evaluates the WHERE after any concurrent writer commits (READ COMMITTED), and on
SQLite the transaction starts with BEGIN IMMEDIATE: on both, concurrent reservations can
never overspend. The account's row is always changed before the credential's, in every
statement here, so two transactions never wait on each other in opposite orders.

Each reservation also gets a row in quota_reservations (with the credential that asked),
so that after a crash reconcile_stale() can give back what was reserved and never settled.
The day is the calendar day in the quota timezone (default Asia/Shanghai); a request is
counted on the day it was reserved.

Platform defaults: an account whose quota_chars_per_day / quota_tokens_per_day is NULL
gets the book's default_chars / default_tokens (None: unlimited), field by field, in
reserve() and status() alike. A credential's NULL is simply no limit of its own (its
account's still holds); its counters are those of its quota_root_id (the first credential
of its rotation line), so the old and the new secret of a rotation share one day's quota.
Usage is counted for every holder, limited or not, so a limit set later in the day sees it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from wharf.errors import Conflict, InvalidParam, NotFound, QuotaExceeded
from wharf.platform.models import Account, Credential, CredentialQuotaUsage, QuotaReservation, QuotaUsage, utcnow
from wharf.platform.store import Store

DEFAULT_TZ = "Asia/Shanghai"
_NO_LIMIT = 2 ** 62          # stands for "no limit" in the conditional UPDATE


class _Counters:
    """The daily counters of one kind of holder (a table keyed by `key` and day) and the
    statements over them, built once: they run on every request (Core, not the ORM, keeps
    reserve + settle well under a millisecond each on SQLite)."""

    def __init__(self, store: Store, table: Table, key: str):
        c = table.c
        self.key = key
        self._ensure = (store.insert(table)
                        .values(chars_used=0, tokens_used=0, chars_reserved=0, tokens_reserved=0)
                        .on_conflict_do_nothing(index_elements=[key, "day"]))
        this_day = (c[key] == bindparam("holder"), c.day == bindparam("d"))
        self._grow = (update(table)
                      .where(*this_day,
                             c.chars_used + c.chars_reserved + bindparam("add_chars") <= bindparam("climit"),
                             c.tokens_used + c.tokens_reserved + bindparam("add_tokens") <= bindparam("tlimit"))
                      .values(chars_reserved=c.chars_reserved + bindparam("add_chars"),
                              tokens_reserved=c.tokens_reserved + bindparam("add_tokens")))
        self._settle = (update(table).where(*this_day)
                        .values(chars_reserved=c.chars_reserved - bindparam("held_chars"),
                                tokens_reserved=c.tokens_reserved - bindparam("held_tokens"),
                                chars_used=c.chars_used + bindparam("used_chars"),
                                tokens_used=c.tokens_used + bindparam("used_tokens")))
        self._read = select(c.chars_used, c.tokens_used, c.chars_reserved, c.tokens_reserved).where(*this_day)

    def ensure(self, conn, holder: int, day: dt.date) -> None:
        conn.execute(self._ensure, {self.key: holder, "day": day})

    def grow(self, conn, holder: int, day: dt.date, limits: tuple[int | None, int | None],
             chars: int, tokens: int) -> bool:
        """The conditional UPDATE: add to the day's reserved amounts only if that stays
        within the limits (None: a bound no holder reaches)."""
        climit, tlimit = limits
        return conn.execute(self._grow, {"holder": holder, "d": day, "add_chars": chars, "add_tokens": tokens,
                                         "climit": _NO_LIMIT if climit is None else climit,
                                         "tlimit": _NO_LIMIT if tlimit is None else tlimit}).rowcount == 1

    def settle(self, conn, holder: int, day: dt.date, held: tuple[int, int], used: tuple[int, int]) -> None:
        conn.execute(self._settle, {"holder": holder, "d": day, "held_chars": held[0], "held_tokens": held[1],
                                    "used_chars": used[0], "used_tokens": used[1]})

    def read(self, conn, holder: int, day: dt.date) -> tuple[int, int, int, int]:
        """(chars_used, tokens_used, chars_reserved, tokens_reserved); zeros for a day not begun."""
        row = conn.execute(self._read, {"holder": holder, "d": day}).first()
        return tuple(row) if row else (0, 0, 0, 0)


class _Hold(NamedTuple):
    """One holder a request reserves on: its counters, id, (chars, tokens) limits, and what
    a refusal says."""
    counters: _Counters
    holder: int
    limits: tuple[int | None, int | None]
    refusal: str


class _NoRoom(Exception):
    """Rolls back an extend() that one of its holders refused."""


# The per-request reads, built once. A credential's limits and counter holder come with
# its account's limits in one query (an outer join: no credential, no credential hold).
_A, _C, _R = Account.__table__, Credential.__table__, QuotaReservation.__table__
_CREDENTIAL_LIMITS = (_C.c.quota_chars_per_day.label("c_chars"), _C.c.quota_tokens_per_day.label("c_tokens"),
                      func.coalesce(_C.c.quota_root_id, _C.c.id).label("c_root"))
_LIMITS = (select(_A.c.quota_chars_per_day, _A.c.quota_tokens_per_day, *_CREDENTIAL_LIMITS)
           .select_from(_A).outerjoin(_C, and_(_C.c.id == bindparam("cred"), _C.c.account_id == _A.c.id))
           .where(_A.c.id == bindparam("acct")))
_RESERVATION_AND_LIMITS = (select(_R.c.account_id, _R.c.day, _A.c.quota_chars_per_day, _A.c.quota_tokens_per_day,
                                  *_CREDENTIAL_LIMITS)
                           .select_from(_R).join(_A, _A.c.id == _R.c.account_id)
                           .outerjoin(_C, _C.c.id == _R.c.credential_id)
                           .where(_R.c.request_id == bindparam("rid")))
_COUNTER_HOLDER = select(func.coalesce(_C.c.quota_root_id, _C.c.id)).where(_C.c.id == bindparam("cred"))
_NEW_RESERVATION = insert(_R)
_GROW_RESERVATION = (update(_R).where(_R.c.request_id == bindparam("rid"))
                     .values(chars=_R.c.chars + bindparam("add_chars"), tokens=_R.c.tokens + bindparam("add_tokens")))
_TAKE_RESERVATION = (delete(_R).where(_R.c.request_id == bindparam("rid"))
                     .returning(_R.c.account_id, _R.c.credential_id, _R.c.day, _R.c.chars, _R.c.tokens))


@dataclass(frozen=True)
class QuotaStatus:
    account_id: int
    day: dt.date
    chars_limit: int | None
    tokens_limit: int | None
    chars_used: int
    tokens_used: int
    chars_reserved: int
    tokens_reserved: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CredentialQuotaStatus:
    """A credential's own day: its limits (None: none of its own) and the counters it
    counts on (shared with the rest of its rotation line)."""
    credential_id: int
    day: dt.date
    chars_limit: int | None
    tokens_limit: int | None
    chars_used: int
    tokens_used: int
    chars_reserved: int
    tokens_reserved: int

    def to_dict(self) -> dict:
        return asdict(self)


def _amount(v, param: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidParam(f"{param} must be a non-negative integer", param=param)
    return v


class QuotaBook:
    def __init__(self, store: Store, tz: str = DEFAULT_TZ, *, default_chars: int | None = None,
                 default_tokens: int | None = None):
        self.store = store
        self.tz = ZoneInfo(tz)
        self.default_chars = default_chars
        self.default_tokens = default_tokens
        self._accounts = _Counters(store, QuotaUsage.__table__, "account_id")
        self._credentials = _Counters(store, CredentialQuotaUsage.__table__, "credential_id")

    def _limits(self, acct) -> tuple[int | None, int | None]:
        """The account's own daily limits, each falling back to the platform default."""
        climit, tlimit = acct
        return (self.default_chars if climit is None else climit,
                self.default_tokens if tlimit is None else tlimit)

    def _holds(self, row, account_id: int) -> list[_Hold]:
        """What a request reserves on, account first: its account, and its credential
        when it has one (a row of _LIMITS or _RESERVATION_AND_LIMITS)."""
        holds = [_Hold(self._accounts, account_id, self._limits((row.quota_chars_per_day, row.quota_tokens_per_day)),
                       "daily quota exceeded")]
        if row.c_root is not None:
            holds.append(_Hold(self._credentials, row.c_root, (row.c_chars, row.c_tokens),
                               "this credential's daily quota exceeded"))
        return holds

    def today(self, now: dt.datetime | None = None) -> dt.date:
        return (now or utcnow()).astimezone(self.tz).date()

    def reserve(self, account_id: int, request_id: str, chars: int = 0, tokens: int = 0,
                now: dt.datetime | None = None, *, credential_id: int | None = None) -> None:
        """Hold `chars` / `tokens` of today's quota of the account and of `credential_id`
        (the credential that asks) for this request, or raise QuotaExceeded(reason="daily")
        changing nothing. Holders without limits always succeed (usage is still counted,
        so a limit set later in the day sees it)."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        day = self.today(now)
        with self.store.write_conn() as conn:
            row = conn.execute(_LIMITS, {"acct": account_id, "cred": credential_id}).first()
            if row is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            # The reservation row first: a duplicate request_id fails before anything changes.
            try:
                conn.execute(_NEW_RESERVATION, {"request_id": request_id, "account_id": account_id,
                                                "credential_id": credential_id if row.c_root is not None else None,
                                                "day": day, "chars": chars, "tokens": tokens,
                                                "created_at": now or utcnow()})
            except IntegrityError:
                raise Conflict(f"request {request_id!r} already holds a reservation",
                               param="request_id") from None
            for hold in self._holds(row, account_id):
                hold.counters.ensure(conn, hold.holder, day)
                if not hold.counters.grow(conn, hold.holder, day, hold.limits, chars, tokens):
                    raise QuotaExceeded(hold.refusal, reason="daily")   # rolls back all of the above

    def extend(self, request_id: str, chars: int = 0, tokens: int = 0) -> bool:
        """Grow a live reservation by `chars` / `tokens`, atomically and within every daily
        limit it holds on (a token can be many characters, so a request may outgrow its
        estimate). Returns False, changing nothing, when a quota has no room or the
        reservation is gone."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        try:
            with self.store.write_conn() as conn:
                r = conn.execute(_RESERVATION_AND_LIMITS, {"rid": request_id}).first()
                if r is None:
                    return False
                for hold in self._holds(r, r.account_id):
                    if not hold.counters.grow(conn, hold.holder, r.day, hold.limits, chars, tokens):
                        raise _NoRoom          # undoes the holds already grown
                conn.execute(_GROW_RESERVATION, {"rid": request_id, "add_chars": chars, "add_tokens": tokens})
                return True
        except _NoRoom:
            return False

    def settle(self, request_id: str, actual_chars: int = 0, actual_tokens: int = 0, *, conn=None) -> bool:
        """Replace the reservation by what was really used, on every holder. Idempotent:
        returns False when there is no such reservation (already settled or released).
        With `conn`, runs inside that write transaction (see Platform.settle_and_record)."""
        actual_chars, actual_tokens = _amount(actual_chars, "actual_chars"), _amount(actual_tokens,
                                                                                     "actual_tokens")
        if conn is None:
            with self.store.write_conn() as conn:
                return self.settle(request_id, actual_chars, actual_tokens, conn=conn)
        # DELETE ... RETURNING: of two concurrent settles only one gets the row.
        r = conn.execute(_TAKE_RESERVATION, {"rid": request_id}).first()
        if r is None:
            return False
        held, used = (r.chars, r.tokens), (actual_chars, actual_tokens)
        self._accounts.settle(conn, r.account_id, r.day, held, used)
        if r.credential_id is not None:
            holder = conn.execute(_COUNTER_HOLDER, {"cred": r.credential_id}).scalar()
            if holder is not None:            # None: the credential was deleted, its counters with it
                self._credentials.settle(conn, holder, r.day, held, used)
        return True

    def release(self, request_id: str) -> bool:
        """Give the whole reservation back (the request used nothing)."""
        return self.settle(request_id, 0, 0)

    def reconcile_stale(self, older_than: dt.timedelta = dt.timedelta(hours=1),
                        now: dt.datetime | None = None, *, created_before: dt.datetime | None = None,
                        usage=None) -> int:
        """Release reservations older than `older_than` (left by a crashed process; a request
        never runs that long), or, with `created_before`, every reservation made before that
        instant (a single process at start-up: nothing older can still be running). Nothing
        is charged: we cannot know what was generated.

        With `usage` (a UsageLog), each released request also gets its usage record, status
        "error:interrupted", unless it already has one (record_usage ignores a second
        record for a request_id): a request killed mid-flight is still accounted exactly
        once. The record is written before the release, so a crash in between leaves the
        reservation for the next reconcile, never a release without a record.
        Returns how many were released."""
        cutoff = created_before if created_before is not None else (now or utcnow()) - older_than
        with self.store.read() as s:
            rows = list(s.execute(select(QuotaReservation.request_id, QuotaReservation.account_id)
                                  .where(QuotaReservation.created_at < cutoff)))
        released = 0
        for rid, account_id in rows:
            if usage is not None:
                usage.record_usage(request_id=rid, account_id=account_id, model="", dialect="",
                                   status="error:interrupted")
            released += bool(self.release(rid))
        return released

    def status(self, account_id: int, day: dt.date | None = None) -> QuotaStatus:
        day = day or self.today()
        with self.store.read_conn() as conn:
            acct = conn.execute(select(_A.c.quota_chars_per_day, _A.c.quota_tokens_per_day)
                                .where(_A.c.id == account_id)).first()
            if acct is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            counts = self._accounts.read(conn, account_id, day)
        return QuotaStatus(account_id, day, *self._limits(acct), *counts)

    def credential_status(self, credential_id: int, day: dt.date | None = None) -> CredentialQuotaStatus:
        """A credential's own limits and the day's counters it counts on."""
        day = day or self.today()
        with self.store.read_conn() as conn:
            row = conn.execute(select(*_CREDENTIAL_LIMITS).where(_C.c.id == credential_id)).first()
            if row is None:
                raise NotFound(f"credential {credential_id} not found", reason="credential")
            counts = self._credentials.read(conn, row.c_root, day)
        return CredentialQuotaStatus(credential_id, day, row.c_chars, row.c_tokens, *counts)
