"""Usage records: exactly one per request_id, and aggregation for the admin API / CLI."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from wharf.errors import InvalidParam
from wharf.platform.models import Service, UsageRecord, utcnow
from wharf.platform.quota import DEFAULT_TZ
from wharf.platform.store import Store

GROUPS = ("day", "model", "service", "account")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value, n: int) -> str:
    """At most n characters that the store can encode: a lone surrogate becomes U+FFFD
    (never a failed insert, which would lose the request's only record)."""
    s = str(value)[:n]
    return s if s.isascii() else _SURROGATE.sub("\ufffd", s)


def _totals() -> tuple:
    """Requests, prompt tokens, completion tokens, generated characters: a group's sums."""
    U = UsageRecord
    return (func.count(U.id), func.coalesce(func.sum(U.prompt_tokens), 0),
            func.coalesce(func.sum(U.completion_tokens), 0), func.coalesce(func.sum(U.generated_chars), 0))


def _day(value) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _service_names(s, ids) -> dict[int, str]:
    """Service id -> endpoint, for the ids given (None and deleted services left out)."""
    ids = {i for i in ids if i is not None}
    if not ids:
        return {}
    return dict(s.execute(select(Service.id, Service.endpoint).where(Service.id.in_(ids))).all())


def _service_label(service_id: int | None, names: dict[int, str], no_service: str) -> str:
    return no_service if service_id is None else names.get(service_id, f"#{service_id} (deleted)")


@dataclass(frozen=True)
class UsageRow:
    key: str                  # the day (ISO), model name, service endpoint or account id
    requests: int
    prompt_tokens: int
    completion_tokens: int
    generated_chars: int
    errors: int

    def to_dict(self) -> dict:
        return asdict(self)


class UsageLog:
    def __init__(self, store: Store, tz: str = DEFAULT_TZ):
        self.store = store
        self.tz = ZoneInfo(tz)
        # Built once (it runs on every request). RETURNING, not rowcount, which an
        # INSERT ... ON CONFLICT DO NOTHING does not report reliably everywhere.
        self._insert_once = (store.insert(UsageRecord).on_conflict_do_nothing(index_elements=["request_id"])
                             .returning(UsageRecord.__table__.c.id))

    def record_usage(self, *, request_id: str, account_id: int, model: str, dialect: str,
                     credential_id: int | None = None, service_id: int | None = None,
                     prompt_tokens: int = 0, completion_tokens: int = 0, generated_chars: int = 0,
                     n: int = 1, status: str = "ok", ttft_ms: int | None = None,
                     latency_ms: int | None = None, user: str | None = None,
                     created_at: dt.datetime | None = None, conn=None) -> bool:
        """Insert the record for this request; a second call with the same request_id is
        ignored. Returns True when this call inserted it. With `conn`, inside that write
        transaction (see Platform.settle_and_record).
        status: "ok" | "cancelled" | "blocked" | "error:<kind>"."""
        if not request_id or len(request_id) > 64:
            raise InvalidParam("request_id must be 1-64 characters", param="request_id")
        created_at = created_at or utcnow()
        values = dict(request_id=request_id, account_id=account_id, credential_id=credential_id,
                      service_id=service_id, model=_text(model or "", 128), dialect=(dialect or "")[:16],
                      prompt_tokens=int(prompt_tokens or 0), completion_tokens=int(completion_tokens or 0),
                      generated_chars=int(generated_chars or 0), n=int(n or 1), status=(status or "ok")[:64],
                      ttft_ms=None if ttft_ms is None else int(ttft_ms),
                      latency_ms=None if latency_ms is None else int(latency_ms),
                      user=None if user is None else _text(user, 128), created_at=created_at,
                      day=created_at.astimezone(self.tz).date())
        if conn is None:
            with self.store.write_conn() as conn:
                return conn.execute(self._insert_once, values).first() is not None
        return conn.execute(self._insert_once, values).first() is not None

    def usage_summary(self, account_id: int | None = None, since: dt.date | None = None,
                      until: dt.date | None = None, group_by: str = "day") -> list[UsageRow]:
        """Totals per day / model / service / account over days [since, until] (quota-timezone
        days, both ends included), optionally for one account."""
        if group_by not in GROUPS:
            raise InvalidParam(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        U = UsageRecord
        key = {"day": U.day, "model": U.model, "service": U.service_id, "account": U.account_id}[group_by]
        q = (select(key, *_totals(), func.count(U.id).filter(U.status.like("error:%")))
             .group_by(key).order_by(key))
        if account_id is not None:
            q = q.where(U.account_id == account_id)
        if since is not None:
            q = q.where(U.day >= since)
        if until is not None:
            q = q.where(U.day <= until)
        with self.store.read() as s:
            rows = s.execute(q).all()
            names = _service_names(s, [r[0] for r in rows]) if group_by == "service" else {}
        out = []
        for k, req, pt, ct, ch, err in rows:
            if group_by == "day":
                label = _day(k)
            elif group_by == "service":
                label = _service_label(k, names, "-")
            else:
                label = str(k)
            out.append(UsageRow(label, int(req), int(pt), int(ct), int(ch), int(err or 0)))
        return out

    def daily_series(self, account_id: int | None, since: dt.date, until: dt.date) -> dict[str, list[dict]]:
        """The console's charts: per day and model, and per day and service (its endpoint),
        the requests, tokens and characters over days [since, until], optionally for one
        account. {"model": [{day, key, requests, tokens, prompt_tokens, completion_tokens,
        chars}, ...], "service": [...]}, each oldest day first."""
        U = UsageRecord
        out = {}
        for group, col in (("model", U.model), ("service", U.service_id)):
            q = (select(U.day, col, *_totals()).where(U.day >= since, U.day <= until)
                 .group_by(U.day, col).order_by(U.day))
            if account_id is not None:
                q = q.where(U.account_id == account_id)
            with self.store.read() as s:
                rows = s.execute(q).all()
                names = _service_names(s, [r[1] for r in rows]) if group == "service" else {}
            out[group] = [{"day": _day(day),
                           "key": _service_label(k, names, "(no service)") if group == "service" else str(k),
                           "requests": int(req), "tokens": int(pt) + int(ct), "prompt_tokens": int(pt),
                           "completion_tokens": int(ct), "chars": int(ch)}
                          for day, k, req, pt, ct, ch in rows]
        return out

    def records(self, account_id: int | None = None, limit: int = 100) -> list[dict]:
        """The newest records (for the console), newest first."""
        q = select(UsageRecord).order_by(UsageRecord.id.desc()).limit(max(1, min(limit, 1000)))
        if account_id is not None:
            q = q.where(UsageRecord.account_id == account_id)
        with self.store.read() as s:
            return [{c.name: getattr(r, c.key) for c in UsageRecord.__table__.columns}
                    for r in s.scalars(q)]
