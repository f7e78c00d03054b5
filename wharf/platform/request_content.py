"""Prompts and outputs: NOT stored unless an account opts in, and then only for its retention.

  policy      accounts.content_retention_days: NULL (the default) stores nothing; n (1-365)
              stores each request's prompt (a chat's messages as JSON) and each choice's
              output for n days. Set by an admin or by the account itself (it is the
              account's own data), through the admin API or the CLI, audited as any
              account change.
  write       in the request's own settle-and-record transaction (Platform.settle_and_record),
              with expires_at = now + the retention the account had then
  read        by request id, for the request's account or an admin (the admin API checks)
  prune       rows past expires_at, and every row of an account that opted out since, in
              small transactions (the request-log pattern), from the server's prune loop

The content lives in its own table so that usage records stay small and fast to list.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass

from sqlalchemy import delete, or_, select

from wharf.errors import InvalidParam, NotFound
from wharf.platform.models import Account, RequestContent, utcnow
from wharf.platform.store import Store

MAX_RETENTION_DAYS = 365
PRUNE_BATCH = 500
PRUNE_PAUSE_S = 0.05


@dataclass(frozen=True)
class StoredContent:
    request_id: str
    account_id: int
    created_at: dt.datetime
    expires_at: dt.datetime
    prompt: str
    outputs: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def retention_days(value) -> int | None:
    """A valid retention: None (store nothing) or whole days from 1 to MAX_RETENTION_DAYS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION_DAYS:
        raise InvalidParam(f"retention_days must be null (store nothing) or 1 to {MAX_RETENTION_DAYS} days",
                           param="retention_days")
    return value


class RequestContents:
    def __init__(self, store: Store):
        self.store = store
        # Once per request id, as its usage record: a second settle of a request adds nothing.
        self._insert = store.insert(RequestContent).on_conflict_do_nothing(index_elements=["request_id"])

    def policy(self, account_id: int) -> int | None:
        with self.store.read() as s:
            a = s.get(Account, account_id)
            if a is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            return a.content_retention_days

    def set_policy(self, account_id: int, days: int | None) -> int | None:
        """Opt in for `days`, or out (None). Opting out deletes the account's stored
        content at the next prune; a new retention applies to requests from now on."""
        days = retention_days(days)
        with self.store.write() as s:          # through the ORM: the audit log sees the change
            a = s.get(Account, account_id)
            if a is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            a.content_retention_days = days
            s.flush()
            return days

    def write(self, conn, *, request_id: str, account_id: int, days: int, prompt: str, outputs: list[str],
              now: dt.datetime | None = None) -> None:
        """Keep this request's content for `days` (inside the caller's write transaction)."""
        now = now or utcnow()
        conn.execute(self._insert, {"request_id": request_id, "account_id": account_id, "created_at": now,
                               "expires_at": now + dt.timedelta(days=days), "prompt": prompt,
                               "outputs": json.dumps(outputs, ensure_ascii=False)})

    def get(self, request_id: str, now: dt.datetime | None = None) -> StoredContent:
        """NotFound when none was stored, or it is past its retention (pruned or not yet)."""
        with self.store.read() as s:
            r = s.get(RequestContent, request_id)
            if r is None or r.expires_at <= (now or utcnow()):
                raise NotFound(f"no stored content for request {request_id!r}", reason="request_content")
            return StoredContent(r.request_id, r.account_id, r.created_at, r.expires_at, r.prompt,
                                 json.loads(r.outputs))

    def prune(self, *, batch: int = PRUNE_BATCH, max_batches: int = 200, pause_s: float = PRUNE_PAUSE_S,
              now: dt.datetime | None = None) -> int:
        """Delete content past its retention or of accounts that opted out; returns how many."""
        opted_out = select(Account.id).where(Account.content_retention_days.is_(None))
        due = (select(RequestContent.request_id)
               .where(or_(RequestContent.expires_at <= (now or utcnow()), RequestContent.account_id.in_(opted_out)))
               .limit(batch))
        total = 0
        for i in range(max_batches):
            if i:
                time.sleep(pause_s)
            with self.store.write() as s:
                ids = list(s.scalars(due))
                if ids:
                    s.execute(delete(RequestContent).where(RequestContent.request_id.in_(ids)))
            total += len(ids)
            if len(ids) < batch:
                break
        return total
