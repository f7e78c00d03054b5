"""Admin API: the audit log (GET /admin/api/audit). Who changed what, newest first.

Same auth and error shape as wharf/api/admin.py. An admin sees every entry (or one
account's with ?account_id=); any other account's key sees only the entries about its
own account's objects, and naming another account is 403.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from wharf.api.admin import AdminRoute, _platform, _target_account, principal
from wharf.platform.audit import MAX_PAGE
from wharf.platform.auth import Principal


class AuditOut(BaseModel):
    id: int
    created_at: dt.datetime
    actor: str
    actor_account_id: int | None
    actor_credential_id: int | None
    source: str
    object_type: str
    object_id: int | None
    account_id: int | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    data: list[AuditOut]
    next_cursor: str | None


def build_audit_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)

    @r.get("/audit", response_model=AuditPage)
    def list_audit(request: Request, account_id: int | None = None,
                   object_type: Literal["account", "credential", "service", "lexicon"] | None = None,
                   object_id: int | None = None, cursor: Annotated[str | None, Query(max_length=32)] = None,
                   limit: int = Query(50, ge=1, le=MAX_PAGE), p: Principal = Depends(principal)):
        """Newest first; pass next_cursor back as ?cursor= for the next page (null: no more)."""
        scope = account_id if p.is_admin else _target_account(p, account_id)
        entries, nxt = _platform(request).audit.page(account_id=scope, object_type=object_type,
                                                     object_id=object_id, cursor=cursor, limit=limit)
        return AuditPage(data=[AuditOut(**e.to_dict()) for e in entries], next_cursor=nxt)

    return r
