"""Admin API: the request log (/admin/api/requests). JSON, and CSV / JSON export.

Same auth and error shape as wharf/api/admin.py. Any account's key sees its own
account's requests; another account's request by id is 404, naming another account
(?account_id=) is 403. An admin sees its own by default, one account with ?account_id=,
everyone's with ?all=true.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from wharf.api.admin import AdminRoute, _platform, _target_account, principal
from wharf.platform.auth import Principal
from wharf.platform.request_log import MAX_PAGE, RequestEntry, RequestFilter, export_csv, export_json


class RequestPage(BaseModel):
    data: list[RequestEntry]            # the platform's record, field for field
    next_cursor: str | None


class Filters:
    """The query parameters every list and export takes, as one RequestFilter for the caller."""

    def __init__(self, account_id: int | None = None, all: bool = False, credential_id: int | None = None,
                 service_id: int | None = None, model: Annotated[str | None, Query(max_length=128)] = None,
                 dialect: Literal["openai", "qianfan", "welm", "sensenova"] | None = None,
                 status: Annotated[str | None, Query(max_length=64, description=
                                                     "ok | cancelled | blocked | error | error:<kind>")] = None,
                 since: Annotated[dt.datetime | None, Query(description="from (inclusive); UTC if no offset")] = None,
                 until: Annotated[dt.datetime | None, Query(description="to (exclusive); UTC if no offset")] = None):
        self.account_id, self.all = account_id, all
        self.rest = dict(credential_id=credential_id, service_id=service_id, model=model, dialect=dialect,
                         status=status, since=since, until=until)

    def for_caller(self, p: Principal) -> RequestFilter:
        everyone = self.all and p.is_admin and self.account_id is None
        return RequestFilter(account_id=None if everyone else _target_account(p, self.account_id), **self.rest)


def build_requests_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)
    P = Depends(principal)
    F = Depends(Filters)

    @r.get("/requests", response_model=RequestPage)
    def list_requests(request: Request, f: Filters = F, cursor: Annotated[str | None, Query(max_length=64)] = None,
                      limit: int = Query(50, ge=1, le=MAX_PAGE), p: Principal = P):
        """Newest first; pass next_cursor back as ?cursor= for the next page (null: no more)."""
        entries, nxt = _platform(request).request_log.page(f.for_caller(p), cursor=cursor, limit=limit)
        return RequestPage(data=entries, next_cursor=nxt)

    @r.get("/requests/export")
    def export_requests(request: Request, f: Filters = F, format: Literal["csv", "json"] = "csv",
                        p: Principal = P):
        """Every matching record, newest first, streamed (read a page at a time)."""
        entries = _platform(request).request_log.iterate(f.for_caller(p))
        if format == "csv":
            return StreamingResponse(export_csv(entries), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": 'attachment; filename="requests.csv"'})
        return StreamingResponse(export_json(entries), media_type="application/json")

    @r.get("/requests/{request_id}", response_model=RequestEntry)
    def get_request(request_id: Annotated[str, Path(max_length=64)], request: Request, p: Principal = P):
        own = None if p.is_admin else p.account_id
        return _platform(request).request_log.get(request_id, account_id=own)

    return r
