"""Admin API: call statistics per service and day (GET /admin/api/stats/services).

Same auth and error shape as wharf/api/admin.py. Any account's key sees its own
account's services; an admin one account's with ?account_id=, everyone's with ?all=true.
Days are the quota timezone's, as in /admin/api/usage.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from wharf.api.admin import AdminRoute, _platform, _target_account, principal
from wharf.errors import InvalidParam
from wharf.platform.auth import Principal
from wharf.platform.service_stats import MAX_DAYS


class ServiceDayOut(BaseModel):
    service_id: int
    endpoint: str | None
    day: dt.date
    requests: int
    ok: int
    cancelled: int
    blocked: int
    errors: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    latency_ms_p50: int | None
    latency_ms_p95: int | None
    ttft_ms_p50: int | None
    ttft_ms_p95: int | None


class ServiceStatsOut(BaseModel):
    account_id: int | None
    since: dt.date
    until: dt.date
    rows: list[ServiceDayOut]


def build_stats_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)

    @r.get("/stats/services", response_model=ServiceStatsOut)
    def service_stats(request: Request, account_id: int | None = None, all: bool = False,
                      service_id: int | None = None, days: int = Query(7, ge=1, le=MAX_DAYS),
                      since: dt.date | None = None, until: dt.date | None = None,
                      p: Principal = Depends(principal)):
        """Per service and day, newest day first: requests, tokens, errors by kind,
        latency and TTFT p50 / p95 of the answered requests."""
        plat = _platform(request)
        target = None if (all and p.is_admin and account_id is None) else _target_account(p, account_id)
        until = until or plat.quota.today()
        since = since or (until - dt.timedelta(days=days - 1))
        if since > until or (until - since).days >= MAX_DAYS:
            raise InvalidParam(f"since must be on or before until, at most {MAX_DAYS} days apart", param="since")
        rows = plat.service_stats.per_day(account_id=target, since=since, until=until, service_id=service_id)
        return ServiceStatsOut(account_id=target, since=since, until=until,
                               rows=[ServiceDayOut(**x.to_dict()) for x in rows])

    return r
