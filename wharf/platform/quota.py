"""Daily quota per account: reserve before generation, settle after.

reserve() is one write transaction whose check-and-add is a single conditional
UPDATE (used + reserved + amount <= limit in the WHERE clause). On PostgreSQL
the UPDATE takes the row lock and re-evaluates the WHERE after any concurrent
writer commits (READ COMMITTED), and on SQLite the transaction starts with
BEGIN IMMEDIATE: on both, concurrent reservations can never overspend.

Each reservation also gets a row in quota_reservations, so that after a crash
reconcile_stale() can give back what was reserved and never settled.
The day is the calendar day in the quota timezone (default Asia/Shanghai);
a request is counted on the day it was reserved.

Platform defaults: an account whose quota_chars_per_day / quota_tokens_per_day is
NULL gets the book's default_chars / default_tokens (None: unlimited), field by
field, in reserve() and status() alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from wharf.errors import Conflict, InvalidParam, NotFound, QuotaExceeded
from wharf.platform.models import Account, QuotaReservation, QuotaUsage, utcnow
from wharf.platform.store import Store

DEFAULT_TZ = "Asia/Shanghai"
_NO_LIMIT = 2 ** 62          # stands for "no limit" in the conditional UPDATE

# The per-request statements, built once: they run on every request (Core, not the ORM,
# keeps reserve + settle well under a millisecond each on SQLite).
_A, _Q, _R = Account.__table__, QuotaUsage.__table__, QuotaReservation.__table__
_ACCOUNT_LIMITS = select(_A.c.quota_chars_per_day, _A.c.quota_tokens_per_day).where(_A.c.id == bindparam("acct"))
_NEW_RESERVATION = insert(_R)
_GROW_DAY = (update(_Q)
             .where(_Q.c.account_id == bindparam("acct"), _Q.c.day == bindparam("d"),
                    _Q.c.chars_used + _Q.c.chars_reserved + bindparam("add_chars") <= bindparam("climit"),
                    _Q.c.tokens_used + _Q.c.tokens_reserved + bindparam("add_tokens") <= bindparam("tlimit"))
             .values(chars_reserved=_Q.c.chars_reserved + bindparam("add_chars"),
                     tokens_reserved=_Q.c.tokens_reserved + bindparam("add_tokens")))
_RESERVATION_AND_LIMITS = (select(_R.c.account_id, _R.c.day, _A.c.quota_chars_per_day, _A.c.quota_tokens_per_day)
                           .join(_A, _A.c.id == _R.c.account_id).where(_R.c.request_id == bindparam("rid")))
_GROW_RESERVATION = (update(_R).where(_R.c.request_id == bindparam("rid"))
                     .values(chars=_R.c.chars + bindparam("add_chars"), tokens=_R.c.tokens + bindparam("add_tokens")))
_TAKE_RESERVATION = (delete(_R).where(_R.c.request_id == bindparam("rid"))
                     .returning(_R.c.account_id, _R.c.day, _R.c.chars, _R.c.tokens))
_SETTLE_DAY = (update(_Q).where(_Q.c.account_id == bindparam("acct"), _Q.c.day == bindparam("d"))
               .values(chars_reserved=_Q.c.chars_reserved - bindparam("held_chars"),
                       tokens_reserved=_Q.c.tokens_reserved - bindparam("held_tokens"),
                       chars_used=_Q.c.chars_used + bindparam("used_chars"),
                       tokens_used=_Q.c.tokens_used + bindparam("used_tokens")))


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
        self._ensure_day = (store.insert(QuotaUsage)
                            .values(chars_used=0, tokens_used=0, chars_reserved=0, tokens_reserved=0)
                            .on_conflict_do_nothing(index_elements=["account_id", "day"]))

    def _limits(self, acct) -> tuple[int | None, int | None]:
        """The account's own daily limits, each falling back to the platform default."""
        climit, tlimit = acct
        return (self.default_chars if climit is None else climit,
                self.default_tokens if tlimit is None else tlimit)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        return (now or utcnow()).astimezone(self.tz).date()

    def reserve(self, account_id: int, request_id: str, chars: int = 0, tokens: int = 0,
                now: dt.datetime | None = None) -> None:
        """Hold `chars` / `tokens` of today's quota for this request, or raise
        QuotaExceeded(reason="daily"). Accounts without limits always succeed (usage is
        still counted, so a limit set later in the day sees it)."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        day = self.today(now)
        with self.store.write_conn() as conn:
            acct = conn.execute(_ACCOUNT_LIMITS, {"acct": account_id}).first()
            if acct is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            # The reservation row first: a duplicate request_id fails before anything changes.
            try:
                conn.execute(_NEW_RESERVATION, {"request_id": request_id, "account_id": account_id, "day": day,
                                                "chars": chars, "tokens": tokens, "created_at": now or utcnow()})
            except IntegrityError:
                raise Conflict(f"request {request_id!r} already holds a reservation",
                               param="request_id") from None
            conn.execute(self._ensure_day, {"account_id": account_id, "day": day})
            if not self._grow(conn, account_id, day, acct, chars, tokens):
                raise QuotaExceeded("daily quota exceeded", reason="daily")   # rolls back the row above

    def _grow(self, conn, account_id: int, day: dt.date, acct, chars: int, tokens: int) -> bool:
        """The conditional UPDATE: add to the day's reserved amounts only if that stays
        within the limits (no limit: a bound no account reaches)."""
        climit, tlimit = self._limits(acct)
        return conn.execute(_GROW_DAY, {"acct": account_id, "d": day, "add_chars": chars, "add_tokens": tokens,
                                        "climit": _NO_LIMIT if climit is None else climit,
                                        "tlimit": _NO_LIMIT if tlimit is None else tlimit}).rowcount == 1

    def extend(self, request_id: str, chars: int = 0, tokens: int = 0) -> bool:
        """Grow a live reservation by `chars` / `tokens`, atomically and within the daily
        limit (a token can be many characters, so a request may outgrow its estimate).
        Returns False, changing nothing, when the quota has no room or the reservation
        is gone."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        with self.store.write_conn() as conn:
            r = conn.execute(_RESERVATION_AND_LIMITS, {"rid": request_id}).first()
            if r is None or not self._grow(conn, r.account_id, r.day, (r.quota_chars_per_day,
                                                                        r.quota_tokens_per_day), chars, tokens):
                return False
            conn.execute(_GROW_RESERVATION, {"rid": request_id, "add_chars": chars, "add_tokens": tokens})
            return True

    def settle(self, request_id: str, actual_chars: int = 0, actual_tokens: int = 0, *, conn=None) -> bool:
        """Replace the reservation by what was really used. Idempotent: returns False when
        there is no such reservation (already settled or released). With `conn`, runs
        inside that write transaction (see Platform.settle_and_record)."""
        actual_chars, actual_tokens = _amount(actual_chars, "actual_chars"), _amount(actual_tokens,
                                                                                     "actual_tokens")
        if conn is None:
            with self.store.write_conn() as conn:
                return self.settle(request_id, actual_chars, actual_tokens, conn=conn)
        # DELETE ... RETURNING: of two concurrent settles only one gets the row.
        r = conn.execute(_TAKE_RESERVATION, {"rid": request_id}).first()
        if r is None:
            return False
        conn.execute(_SETTLE_DAY, {"acct": r.account_id, "d": r.day, "held_chars": r.chars,
                                   "held_tokens": r.tokens, "used_chars": actual_chars,
                                   "used_tokens": actual_tokens})
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
        with self.store.read() as s:
            acct = s.execute(select(Account.quota_chars_per_day, Account.quota_tokens_per_day)
                             .where(Account.id == account_id)).first()
            if acct is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            row = s.scalar(select(QuotaUsage).where(QuotaUsage.account_id == account_id,
                                                    QuotaUsage.day == day))
        vals = (row.chars_used, row.tokens_used, row.chars_reserved, row.tokens_reserved) if row else (0,) * 4
        return QuotaStatus(account_id, day, *self._limits(acct), *vals)

