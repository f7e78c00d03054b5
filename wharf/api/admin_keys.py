"""Admin API: a credential's lifecycle (/admin/api/credentials/{id}/scope and /rotate).

Same auth and error shape as wharf/api/admin.py. The owner of a credential may read its
scope, its quota and rotate it; only an admin may change its expiry, allow-lists or
daily quota (a tenant that could lift them would make them pointless).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from wharf.api.admin import (
    AdminRoute,
    IssuedCredentialOut,
    _owned,
    _platform,
    _require_admin,
    _target_account,
    principal,
    response_schema,
)
from wharf.platform.auth import Principal
from wharf.platform.key_scope import MAX_LIST, MAX_QUOTA, KeyScope
from wharf.platform.quota import CredentialQuotaStatus

_QUOTA = "on top of the account's; null: none of its own; 0: nothing allowed; n: at most n"


ScopeOut = response_schema(KeyScope, "ScopeOut")
CredentialQuotaOut = response_schema(CredentialQuotaStatus, "CredentialQuotaOut")


class ScopeIn(BaseModel):
    """Fields sent are set; null clears one (never expires / any model / any service)."""
    model_config = ConfigDict(extra="forbid")
    expires_at: dt.datetime | None = Field(None, description="refused from then on; UTC if no offset")
    allowed_models: list[str] | None = Field(None, max_length=MAX_LIST)
    allowed_services: list[int] | None = Field(None, max_length=MAX_LIST)
    quota_chars_per_day: int | None = Field(None, ge=0, le=MAX_QUOTA,
                                            description="generated characters a day, " + _QUOTA)
    quota_tokens_per_day: int | None = Field(None, ge=0, le=MAX_QUOTA, description="tokens a day, " + _QUOTA)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: int = Field(ge=0, le=365 * 86400, description="how long the old secret keeps working")


class RotatedOut(IssuedCredentialOut):
    old: ScopeOut


def build_keys_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)
    P = Depends(principal)

    # Not /credentials/scopes: the admin router's /credentials/{credential_id} comes first.
    @r.get("/credential-scopes", response_model=list[ScopeOut])
    def list_scopes(request: Request, account_id: int | None = None, all: bool = False, p: Principal = P):
        """Every credential's scope, of the caller's account (an admin: one account's with
        ?account_id=, everyone's with ?all=true), for a list of keys in one call."""
        target = None if (all and p.is_admin and account_id is None) else _target_account(p, account_id)
        return [s.to_dict() for s in _platform(request).key_scopes.list(target)]

    @r.get("/credentials/{credential_id}/scope", response_model=ScopeOut)
    def get_scope(credential_id: int, request: Request, p: Principal = P):
        plat = _platform(request)
        _owned(p, plat.credentials.get(credential_id), "credential")
        return plat.key_scopes.get(credential_id).to_dict()

    @r.patch("/credentials/{credential_id}/scope", response_model=ScopeOut)
    def set_scope(credential_id: int, body: ScopeIn, request: Request, p: Principal = P):
        plat = _platform(request)
        _owned(p, plat.credentials.get(credential_id), "credential")     # 404 before 403: ids leak nothing
        _require_admin(p)
        return plat.key_scopes.set(credential_id, **body.model_dump(exclude_unset=True)).to_dict()

    @r.get("/credentials/{credential_id}/quota", response_model=CredentialQuotaOut)
    def get_quota(credential_id: int, request: Request, p: Principal = P):
        plat = _platform(request)
        _owned(p, plat.credentials.get(credential_id), "credential")
        return plat.quota.credential_status(credential_id).to_dict()

    @r.post("/credentials/{credential_id}/rotate", response_model=RotatedOut, status_code=201)
    def rotate(credential_id: int, body: RotateIn, request: Request, p: Principal = P):
        """A new secret (a new credential with the same account, label, limits and scope);
        the old one keeps working for grace_s seconds. The new secret is shown once."""
        plat = _platform(request)
        _owned(p, plat.credentials.get(credential_id), "credential")
        issued = plat.key_scopes.rotate(credential_id, grace=dt.timedelta(seconds=body.grace_s), actor=p)
        return RotatedOut(**issued.to_dict(), old=plat.key_scopes.get(credential_id).to_dict())

    return r
