"""The request log: every request that passed authentication, found by its id or listed.

A request's log entry IS its usage record (one row, written once in the same
transaction as its quota settlement: wharf/platform/core.py), so the log can never
disagree with usage or lose a request usage has. Its `request_id` is the id the client
saw: the dialect's own (Qianfan `as-...`, OpenAI `chatcmpl-...`, WeLM and SenseNova
ids) and the X-Request-Id header (wharf/api/request_ids.py).

Prompts and outputs are not stored: a record holds counts, timings and the outcome.

Lists are newest first in (created_at, id) order with a keyset cursor, on the indexes of
migration 0005, so a page costs about the same however deep it is and however many
millions of rows there are. Retention deletes the oldest rows in small transactions
(the token_prune pattern), so request writers get SQLite's write lock in between.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

from sqlalchemy import Select, and_, delete, or_, select

from wharf.errors import InvalidParam, NotFound
from wharf.platform.models import UsageRecord, utcnow
from wharf.platform.store import Store

MAX_PAGE = 1000
STATUS_RE = re.compile(r"ok|cancelled|blocked|error(:[a-z_]{1,48})?")
PRUNE_BATCH = 500
PRUNE_PAUSE_S = 0.05
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class RequestEntry:
    """One request as operators and scripts see it (stable field names)."""
    request_id: str
    created_at: dt.datetime
    account_id: int
    credential_id: int | None
    service_id: int | None
    dialect: str
    model: str
    status: str                 # ok | cancelled | blocked | error:<kind>
    error: str | None           # the error kind of an error:<kind> status
    prompt_tokens: int
    completion_tokens: int
    generated_chars: int
    n: int
    ttft_ms: int | None
    latency_ms: int | None
    user: str | None

    @classmethod
    def of(cls, r: UsageRecord) -> "RequestEntry":
        return cls(request_id=r.request_id, created_at=r.created_at, account_id=r.account_id,
                   credential_id=r.credential_id, service_id=r.service_id, dialect=r.dialect, model=r.model,
                   status=r.status, error=r.status[6:] if r.status.startswith("error:") else None,
                   prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                   generated_chars=r.generated_chars, n=r.n, ttft_ms=r.ttft_ms, latency_ms=r.latency_ms,
                   user=r.user)

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = [f.name for f in fields(RequestEntry)]


@dataclass(frozen=True)
class RequestFilter:
    """Which records: each given field narrows; `since` is inclusive, `until` exclusive.
    status "error" matches every error:<kind>."""
    account_id: int | None = None
    credential_id: int | None = None
    service_id: int | None = None
    model: str | None = None
    dialect: str | None = None
    status: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self):
        if self.status is not None and not STATUS_RE.fullmatch(self.status):
            raise InvalidParam("status must be ok, cancelled, blocked, error or error:<kind>", param="status")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:   # a bare time is UTC
                object.__setattr__(self, name, value.replace(tzinfo=dt.timezone.utc))

    def apply(self, q: Select) -> Select:
        U = UsageRecord
        for name in ("account_id", "credential_id", "service_id", "model", "dialect"):
            value = getattr(self, name)
            if value is not None:
                q = q.where(getattr(U, name) == value)
        if self.status == "error":
            q = q.where(U.status.like("error:%"))
        elif self.status is not None:
            q = q.where(U.status == self.status)
        if self.since is not None:
            q = q.where(U.created_at >= self.since)
        if self.until is not None:
            q = q.where(U.created_at < self.until)
        return q


def encode_cursor(created_at: dt.datetime, row_id: int) -> str:
    micros = (created_at - _EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}.{row_id}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        micros, row_id = (int(x) for x in cursor.split("."))
        if row_id < 0 or not 0 <= micros < 2**62:
            raise ValueError
        return _EPOCH + dt.timedelta(microseconds=micros), row_id
    except (ValueError, OverflowError):
        raise InvalidParam("cursor is not one this API gave out (use next_cursor as is)", param="cursor") from None


class RequestLog:
    def __init__(self, store: Store):
        self.store = store

    def get(self, request_id: str, *, account_id: int | None = None) -> RequestEntry:
        """The record of one request; with `account_id`, only if it is that account's (another
        account's request is "not found", so ids leak nothing)."""
        q = select(UsageRecord).where(UsageRecord.request_id == request_id[:64])
        if account_id is not None:
            q = q.where(UsageRecord.account_id == account_id)
        with self.store.read() as s:
            row = s.scalars(q).first()
        if row is None:
            raise NotFound("no request with this id", reason="request")
        return RequestEntry.of(row)

    def page(self, flt: RequestFilter, *, cursor: str | None = None,
             limit: int = 50) -> tuple[list[RequestEntry], str | None]:
        """Up to `limit` records after `cursor`, newest first, and the cursor of the next
        page (None at the end)."""
        U = UsageRecord
        limit = max(1, min(int(limit), MAX_PAGE))
        q = flt.apply(select(U)).order_by(U.created_at.desc(), U.id.desc()).limit(limit + 1)
        if cursor:
            at, row_id = decode_cursor(cursor)
            # (created_at, id) < (at, row_id), spelled out, with the redundant bound
            # created_at <= at: without it SQLite does not see one index range in the OR
            # and walks the index from the top (60 ms instead of ~1 at 1 M rows, deep pages).
            q = q.where(U.created_at <= at, or_(U.created_at < at, and_(U.created_at == at, U.id < row_id)))
        with self.store.read() as s:
            rows = list(s.scalars(q))
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return [RequestEntry.of(r) for r in rows], nxt

    def iterate(self, flt: RequestFilter, *, batch: int = MAX_PAGE) -> Iterator[RequestEntry]:
        """Every matching record, newest first, one short read transaction per page (an
        export of millions of rows never holds one transaction open)."""
        cursor = None
        while True:
            entries, cursor = self.page(flt, cursor=cursor, limit=batch)
            yield from entries
            if cursor is None:
                return

    def prune(self, *, retention: dt.timedelta, batch: int = PRUNE_BATCH, max_batches: int = 200,
              pause_s: float = PRUNE_PAUSE_S, now: dt.datetime | None = None) -> int:
        """Delete records older than `retention`, oldest first, at most `batch` rows a
        transaction and `max_batches` transactions a call; returns how many. Quota
        counters are separate rows (quota_usage), so no quota changes."""
        cutoff = (now or utcnow()) - retention
        oldest = (select(UsageRecord.id).where(UsageRecord.created_at < cutoff)
                  .order_by(UsageRecord.created_at, UsageRecord.id).limit(batch))
        total = 0
        for i in range(max_batches):
            if i:
                time.sleep(pause_s)
            with self.store.write() as s:
                ids = list(s.scalars(oldest))
                if ids:
                    s.execute(delete(UsageRecord).where(UsageRecord.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                break
        return total


def export_csv(entries: Iterator[RequestEntry]) -> Iterator[str]:
    """CSV with a header row of FIELDS, in pieces of about 64 kB."""
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    out.writeheader()
    for e in entries:
        out.writerow({**e.to_dict(), "created_at": e.created_at.isoformat()})
        if buf.tell() > 64_000:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def export_json(entries: Iterator[RequestEntry]) -> Iterator[str]:
    """One JSON array of records, a record a piece."""
    yield "["
    for i, e in enumerate(entries):
        yield ("," if i else "") + json.dumps({**e.to_dict(), "created_at": e.created_at.isoformat()},
                                              ensure_ascii=False)
    yield "]\n"
