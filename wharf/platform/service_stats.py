"""Call statistics per service and day (Qianfan's 调用统计), from the usage records.

For each (service, quota-timezone day): requests, prompt / completion tokens, answered
(ok), cancelled, blocked, errors by kind (the <kind> of error:<kind>), and latency and
TTFT p50 / p95 over the answered requests (nearest rank, exact: the numbers a user can
check against their own request log).

Percentiles need every value, so the rows of the asked range are read once, in pages of
a server-side cursor, and reduced here: the same code on SQLite (which has no
percentile functions) and PostgreSQL. Requests without a service (OpenAI, WeLM,
SenseNova) are not in any service's statistics.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from sqlalchemy import select

from wharf.platform.models import Service, UsageRecord
from wharf.platform.store import Store

MAX_DAYS = 366


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class ServiceDay:
    service_id: int
    endpoint: str | None            # None: the service was deleted since
    day: dt.date
    requests: int = 0
    ok: int = 0
    cancelled: int = 0
    blocked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_p50: int | None = None
    latency_ms_p95: int | None = None
    ttft_ms_p50: int | None = None
    ttft_ms_p95: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Acc:
    __slots__ = ("completion", "latency", "prompt", "requests", "status", "ttft")

    def __init__(self):
        self.requests = self.prompt = self.completion = 0
        self.status: Counter[str] = Counter()
        self.latency: list[int] = []
        self.ttft: list[int] = []


class ServiceStats:
    def __init__(self, store: Store):
        self.store = store

    def per_day(self, *, account_id: int | None, since: dt.date, until: dt.date,
                service_id: int | None = None) -> list[ServiceDay]:
        """Days [since, until] (both included), one account's services (None: every
        account's), newest day first, then by service id."""
        U = UsageRecord
        q = (select(U.service_id, U.day, U.status, U.prompt_tokens, U.completion_tokens, U.latency_ms, U.ttft_ms)
             .where(U.service_id.is_not(None), U.day >= since, U.day <= until))
        if account_id is not None:
            q = q.where(U.account_id == account_id)
        if service_id is not None:
            q = q.where(U.service_id == service_id)
        acc: dict[tuple[int, dt.date], _Acc] = defaultdict(_Acc)
        with self.store.read() as s:
            for sid, day, status, pt, ct, lat, ttft in s.execute(q.execution_options(yield_per=5000)):
                a = acc[(sid, day)]
                a.requests += 1
                a.prompt += pt
                a.completion += ct
                a.status[status] += 1
                if status == "ok":
                    if lat is not None:
                        a.latency.append(lat)
                    if ttft is not None:
                        a.ttft.append(ttft)
            ids = {sid for sid, _ in acc}
            rows = s.execute(select(Service.id, Service.endpoint).where(Service.id.in_(ids)))
            endpoints = {r.id: r.endpoint for r in rows}
        out = []
        for (sid, day), a in sorted(acc.items(), key=lambda kv: (-kv[0][1].toordinal(), kv[0][0])):
            a.latency.sort()
            a.ttft.sort()
            out.append(ServiceDay(
                service_id=sid, endpoint=endpoints.get(sid), day=day, requests=a.requests, ok=a.status["ok"],
                cancelled=a.status["cancelled"], blocked=a.status["blocked"],
                errors={k[6:]: n for k, n in sorted(a.status.items()) if k.startswith("error:")},
                prompt_tokens=a.prompt, completion_tokens=a.completion,
                latency_ms_p50=percentile(a.latency, 0.5), latency_ms_p95=percentile(a.latency, 0.95),
                ttft_ms_p50=percentile(a.ttft, 0.5), ttft_ms_p95=percentile(a.ttft, 0.95)))
        return out
