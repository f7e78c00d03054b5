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

from sqlalchemy import and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from wharf.errors import Conflict, InvalidParam, NotFound, QuotaExceeded
from wharf.platform.models import Account, QuotaReservation, QuotaUsage, utcnow
from wharf.platform.store import Store

DEFAULT_TZ = "Asia/Shanghai"


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

    def _limits(self, acct) -> tuple[int | None, int | None]:
        """The account's own daily limits, each falling back to the platform default."""
        climit, tlimit = acct
        return (self.default_chars if climit is None else climit,
                self.default_tokens if tlimit is None else tlimit)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        return (now or utcnow()).astimezone(self.tz).date()

    def _ensure_row(self, s, account_id: int, day: dt.date) -> None:
        s.execute(self.store.insert(QuotaUsage)
                  .values(account_id=account_id, day=day, chars_used=0, tokens_used=0,
                          chars_reserved=0, tokens_reserved=0)
                  .on_conflict_do_nothing(index_elements=["account_id", "day"]))

    def reserve(self, account_id: int, request_id: str, chars: int = 0, tokens: int = 0,
                now: dt.datetime | None = None) -> None:
        """Hold `chars` / `tokens` of today's quota for this request, or raise
        QuotaExceeded(reason="daily"). Accounts without limits always succeed (usage is
        still counted, so a limit set later in the day sees it)."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        day = self.today(now)
        with self.store.write() as s:
            acct = s.execute(select(Account.quota_chars_per_day, Account.quota_tokens_per_day)
                             .where(Account.id == account_id)).first()
            if acct is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            climit, tlimit = self._limits(acct)
            # The reservation row first: a duplicate request_id fails before anything changes.
            if s.get(QuotaReservation, request_id) is not None:
                raise Conflict(f"request {request_id!r} already holds a reservation", param="request_id")
            s.add(QuotaReservation(request_id=request_id, account_id=account_id, day=day, chars=chars,
                                   tokens=tokens, created_at=now or utcnow()))
            try:
                s.flush()
            except IntegrityError:
                raise Conflict(f"request {request_id!r} already holds a reservation",
                               param="request_id") from None
            self._ensure_row(s, account_id, day)
            conds = [QuotaUsage.account_id == account_id, QuotaUsage.day == day]
            if climit is not None:
                conds.append(QuotaUsage.chars_used + QuotaUsage.chars_reserved + chars <= climit)
            if tlimit is not None:
                conds.append(QuotaUsage.tokens_used + QuotaUsage.tokens_reserved + tokens <= tlimit)
            res = s.execute(update(QuotaUsage).where(and_(*conds)).values(
                chars_reserved=QuotaUsage.chars_reserved + chars,
                tokens_reserved=QuotaUsage.tokens_reserved + tokens))
            if res.rowcount != 1:
                raise QuotaExceeded("daily quota exceeded", reason="daily")   # rolls back the row above

    def extend(self, request_id: str, chars: int = 0, tokens: int = 0) -> bool:
        """Grow a live reservation by `chars` / `tokens`, atomically and within the daily
        limit (a token can be many characters, so a request may outgrow its estimate).
        Returns False, changing nothing, when the quota has no room or the reservation
        is gone."""
        chars, tokens = _amount(chars, "chars"), _amount(tokens, "tokens")
        with self.store.write() as s:
            r = s.get(QuotaReservation, request_id)
            if r is None:
                return False
            acct = s.execute(select(Account.quota_chars_per_day, Account.quota_tokens_per_day)
                             .where(Account.id == r.account_id)).first()
            climit, tlimit = self._limits(acct)
            conds = [QuotaUsage.account_id == r.account_id, QuotaUsage.day == r.day]
            if climit is not None:
                conds.append(QuotaUsage.chars_used + QuotaUsage.chars_reserved + chars <= climit)
            if tlimit is not None:
                conds.append(QuotaUsage.tokens_used + QuotaUsage.tokens_reserved + tokens <= tlimit)
            res = s.execute(update(QuotaUsage).where(and_(*conds)).values(
                chars_reserved=QuotaUsage.chars_reserved + chars,
                tokens_reserved=QuotaUsage.tokens_reserved + tokens))
            if res.rowcount != 1:
                return False
            r.chars += chars
            r.tokens += tokens
            return True

    def settle(self, request_id: str, actual_chars: int = 0, actual_tokens: int = 0) -> bool:
        """Replace the reservation by what was really used. Idempotent: returns False when
        there is no such reservation (already settled or released)."""
        actual_chars, actual_tokens = _amount(actual_chars, "actual_chars"), _amount(actual_tokens,
                                                                                     "actual_tokens")
        with self.store.write() as s:
            r = s.get(QuotaReservation, request_id)
            if r is None:
                return False
            if s.execute(delete(QuotaReservation).where(QuotaReservation.request_id == request_id)
                         ).rowcount != 1:
                return False      # a concurrent settle won
            s.execute(update(QuotaUsage)
                      .where(QuotaUsage.account_id == r.account_id, QuotaUsage.day == r.day)
                      .values(chars_reserved=QuotaUsage.chars_reserved - r.chars,
                              tokens_reserved=QuotaUsage.tokens_reserved - r.tokens,
                              chars_used=QuotaUsage.chars_used + actual_chars,
                              tokens_used=QuotaUsage.tokens_used + actual_tokens))
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

