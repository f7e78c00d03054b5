"""Admin API: storing prompts and outputs (wharf/platform/request_content.py).

  GET|PUT /admin/api/accounts/{id}/content-storage   {"retention_days": null | 1-365}
  GET     /admin/api/requests/{request_id}/content     the stored prompt and outputs

Off by default. The account itself (its own data) or an admin opts in or out; another
account's storage or content is 404, as its other objects are. Same auth and error
shape as wharf/api/admin.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from wharf.api.admin import AdminRoute, _platform, principal, response_schema
from wharf.errors import NotFound
from wharf.platform.auth import Principal
from wharf.platform.request_content import MAX_RETENTION_DAYS, StoredContent


class ContentStorageOut(BaseModel):
    account_id: int
    retention_days: int | None


class ContentStorageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retention_days: int | None = Field(description=f"null: store nothing (the default); 1-{MAX_RETENTION_DAYS}: "
                                                   "keep each request's prompt and outputs this many days",
                                       ge=1, le=MAX_RETENTION_DAYS)


ContentOut = response_schema(StoredContent, "ContentOut")


def _own_account(p: Principal, account_id: int) -> int:
    if account_id != p.account_id and not p.is_admin:
        raise NotFound("account not found", reason="account")
    return account_id


def build_content_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)
    P = Depends(principal)

    @r.get("/accounts/{account_id}/content-storage", response_model=ContentStorageOut)
    def get_storage(account_id: int, request: Request, p: Principal = P):
        days = _platform(request).request_contents.policy(_own_account(p, account_id))
        return ContentStorageOut(account_id=account_id, retention_days=days)

    @r.put("/accounts/{account_id}/content-storage", response_model=ContentStorageOut)
    def set_storage(account_id: int, body: ContentStorageIn, request: Request, p: Principal = P):
        """Opt in (retention_days) or out (null: stored content is deleted at the next prune)."""
        days = _platform(request).request_contents.set_policy(_own_account(p, account_id), body.retention_days)
        return ContentStorageOut(account_id=account_id, retention_days=days)

    @r.get("/requests/{request_id}/content", response_model=ContentOut)
    def get_content(request_id: str, request: Request, p: Principal = P):
        stored = _platform(request).request_contents.get(request_id)
        if stored.account_id != p.account_id and not p.is_admin:
            raise NotFound(f"no stored content for request {request_id!r}", reason="request_content")
        return stored.to_dict()

    return r
