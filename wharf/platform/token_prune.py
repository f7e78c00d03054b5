"""Deleting expired Qianfan OAuth tokens, off the request path and in small batches.

Every token is a row for 30 days (what Baidu does), kept EXPIRED_TOKEN_KEEP_S longer so
it answers "expired" rather than "invalid". Deleting them while issuing a token put an
unbounded DELETE on a request (thousands of rows when a burst of tokens expires
together), holding SQLite's one write lock meanwhile. Here each transaction deletes at
most `batch` rows by primary key, with a pause between two, so request writers get the
lock in between; the app runs it every `token_prune_interval_s` in a worker thread.
"""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import delete, select

from wharf.platform.auth import EXPIRED_TOKEN_KEEP_S
from wharf.platform.models import AccessToken, utcnow
from wharf.platform.store import Store

BATCH = 500
PAUSE_S = 0.05


def prune_expired_tokens(store: Store, *, keep_s: float = EXPIRED_TOKEN_KEEP_S, batch: int = BATCH,
                         max_batches: int = 200, pause_s: float = PAUSE_S, now: dt.datetime | None = None) -> int:
    """Delete tokens that expired more than `keep_s` ago; returns how many. At most
    `max_batches` transactions a call: the rest waits for the next call."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=keep_s)
    oldest = (select(AccessToken.id).where(AccessToken.expires_at < cutoff)
              .order_by(AccessToken.expires_at).limit(batch))
    total = 0
    for i in range(max_batches):
        if i:
            time.sleep(pause_s)
        with store.write() as s:
            ids = list(s.scalars(oldest))
            if ids:
                s.execute(delete(AccessToken).where(AccessToken.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            break
    return total
