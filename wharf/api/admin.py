"""Admin API (/admin/api): accounts, credentials, services, usage, quota, lexicon. JSON only.

Auth: `Authorization: Bearer <API key>`. An admin account's key may manage
everything; any other account's key manages only that account's own
credentials, services and usage (the console signs non-admin users in too).
Asking for another account explicitly (?account_id= / "account_id") is 403;
another account's object by id is 404, so ids of others' objects leak nothing.
A non-admin account's own credentials and services stay within the ceilings its
provider set (wharf/platform/tenancy.py: lower yes, raise or clear no, 403), and
an account holds at most WHARF_MAX_CREDENTIALS_PER_ACCOUNT active credentials and
WHARF_MAX_SERVICES_PER_ACCOUNT services (403 beyond).

Errors: {"error": {"message", "type", "param"}} with 401 (auth), 403, 404,
409 (duplicate), 400 (a value the platform rejects), 422 (body/query schema).

Needs request.app.state.platform (wharf.platform.core.Platform) and, to check
model names, request.app.state.registry with .names() -> list[str].
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model

from wharf.api.dialect import Dialect, retry_after
from wharf.errors import (
    AuthError,
    Conflict,
    InvalidParam,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Timeout,
    WharfError,
    by_kind,
)
from wharf.platform import audit
from wharf.platform.accounts import AccountInfo
from wharf.platform.auth import Principal
from wharf.platform.credentials import CredentialInfo
from wharf.platform.lexicon_terms import MAX_TERM_CHARS, MAX_TERMS, replace_lexicon
from wharf.platform.quota import QuotaStatus
from wharf.platform.services import ServiceInfo
from wharf.platform.usage import UsageRow

# The admin API's and console's error table; a kind not in it is an internal error (500).
STATUS = {AuthError: 401, PermissionDenied: 403, NotFound: 404, Conflict: 409, InvalidParam: 400,
          InvalidRequest: 400, QuotaExceeded: 429, RateLimited: 429, Overloaded: 503, Timeout: 504}


def error_body(message: str, type_: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param}}


def admin_error(err: WharfError) -> JSONResponse:
    """`err` in the admin API's shape: {"error": {"message", "type", "param"}}; an
    internal error's message is not shown."""
    status = by_kind(STATUS, err, 500)
    if isinstance(err, InvalidRequest) and err.reason == "too_large":
        status = 413
    msg = "internal error" if status == 500 else err.message
    headers = {**retry_after(err), "Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(msg, err.kind, err.param), status_code=status, headers=headers)


class AdminRoute(APIRoute):
    """Turns platform errors and schema errors into the admin API's JSON error shape."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            # Every change this call makes is audited as its own (principal() names the caller).
            op = audit.Operation(source=f"{request.method} {request.url.path}", actor="unauthenticated")
            try:
                with audit.acting(op):
                    return await handler(request)
            except WharfError as e:
                return admin_error(e)
            except OverflowError:
                # An id beyond 64 bits (the store's integers): no such object.
                return JSONResponse(error_body("not found", "not_found"), status_code=404)
            except RequestValidationError as e:
                errs = e.errors()
                first = errs[0] if errs else {}
                loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
                return JSONResponse(error_body(first.get("msg", "invalid request"), "invalid_param",
                                               ".".join(loc) or None), status_code=422)

        return wrapped


# -- schemas ---------------------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def response_schema(info: type, name: str) -> type[BaseModel]:
    """The response schema of a platform dataclass: its fields, types and defaults, under the
    name the OpenAPI document and the CLI's --json use. One list of fields, the platform's."""
    def default(f: dataclasses.Field):
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return Field(default_factory=f.default_factory)
        return ...                                      # required

    hints = typing.get_type_hints(info)
    fields = {f.name: (hints[f.name], default(f)) for f in dataclasses.fields(info)}
    doc = info.__doc__ if not (info.__doc__ or "").startswith(info.__name__ + "(") else None
    return create_model(name, __base__=_Out, __doc__=doc, **fields)


AccountOut = response_schema(AccountInfo, "AccountOut")


_LIMIT = "null: no limit; 0: nothing allowed (every request refused); n: at most n"
_CEILING = ("the most the account may give {} of its own {} itself (null: no ceiling); setting it brings "
            "the account's {} above it down to it; a limit an admin sets on one of them tightens it")


class Limits(BaseModel):
    """Limits of a credential (they narrow the account's). A non-admin account may lower them,
    or set them up to its account's ceilings (key_*), but never raise one above both its
    current value and the ceiling, nor clear one under a ceiling (403)."""
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(None, ge=0, description="requests a minute; " + _LIMIT)
    tpm: int | None = Field(None, ge=0, description="tokens a minute (prompt + output); " + _LIMIT)
    qps: int | None = Field(None, ge=0, description="requests a second; " + _LIMIT)
    max_concurrency: int | None = Field(None, ge=0, description="requests at once; " + _LIMIT)


def _ceiling(field: str, kind: str) -> str:
    return _CEILING.format(field, kind, kind)


class AccountLimits(Limits):
    """An account's limits (admin only). null on rpm ... quota_*: the platform default
    (WHARF_DEFAULT_*) applies, or no limit without one."""
    quota_chars_per_day: int | None = Field(None, ge=0, description="generated characters a day; " + _LIMIT)
    quota_tokens_per_day: int | None = Field(None, ge=0, description="tokens a day; " + _LIMIT)
    key_rpm: int | None = Field(None, ge=0, description=_ceiling("rpm", "credentials"))
    key_tpm: int | None = Field(None, ge=0, description=_ceiling("tpm", "credentials"))
    key_qps: int | None = Field(None, ge=0, description=_ceiling("qps", "credentials"))
    key_max_concurrency: int | None = Field(None, ge=0, description=_ceiling("max_concurrency", "credentials"))
    service_rpm: int | None = Field(None, ge=0, description=_ceiling("rpm", "services"))
    service_tpm: int | None = Field(None, ge=0, description=_ceiling("tpm", "services"))


class AccountCreate(AccountLimits):
    name: str = Field(min_length=1, max_length=64)
    is_admin: bool = False


CredentialOut = response_schema(CredentialInfo, "CredentialOut")


class CredentialCreate(Limits):
    account_id: int | None = None
    kind: Literal["api_key", "qianfan_app", "qianfan_iam", "sensenova"] = "api_key"
    label: str = Field("", max_length=128)


class IssuedCredentialOut(BaseModel):
    """Shown once. api_key: `api_key`; qianfan_app: `api_key` + `secret_key`;
    qianfan_iam: `access_key` + `secret_key`; sensenova: `access_key_id` + `secret_access_key`.
    `public_id` / `secret` carry the same values for every kind."""

    credential: CredentialOut
    public_id: str
    secret: str
    api_key: str | None = None
    key_prefix: str | None = None
    secret_key: str | None = None
    access_key: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


ServiceOut = response_schema(ServiceInfo, "ServiceOut")


class ServiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_id: int | None = None
    endpoint: str = Field(description="the API address you choose (Qianfan's urlSuffix, 2-20 of a-z 0-9 _ -); "
                                      "the service's endpoint is it behind a random prefix, e.g. lbwxxxd4_test1")
    model: str = Field(min_length=1, max_length=128)
    kind: Literal["completions", "chat"]
    description: str = Field("", max_length=1024)
    rpm: int | None = Field(None, ge=0, description="requests a minute; " + _LIMIT)
    tpm: int | None = Field(None, ge=0, description="tokens a minute; " + _LIMIT)


class ServiceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=128)
    kind: Literal["completions", "chat"] | None = None
    description: str | None = Field(None, max_length=1024)
    rpm: int | None = Field(None, ge=0, description="requests a minute; " + _LIMIT)
    tpm: int | None = Field(None, ge=0, description="tokens a minute; " + _LIMIT)


UsageRowOut = response_schema(UsageRow, "UsageRowOut")


class UsageOut(BaseModel):
    account_id: int | None
    since: dt.date
    until: dt.date
    group_by: str
    rows: list[UsageRowOut]


QuotaOut = response_schema(QuotaStatus, "QuotaOut")


class LexiconIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: list[Annotated[str, Field(max_length=MAX_TERM_CHARS)]] = Field(max_length=MAX_TERMS)


class LexiconOut(BaseModel):
    terms: list[str]
    count: int
    path: str | None
    # The shared store's lexicon version that this replica enforces (None: none stored yet).
    version: int | None = None


class MeOut(BaseModel):
    account: AccountOut
    credential_id: int


# -- helpers ---------------------------------------------------------------------------

def _platform(request: Request):
    return request.app.state.platform


def _model_check(request: Request):
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        return None
    return lambda name: name in set(registry.names())


def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    token = header[7:] if header[:7].lower() == "bearer " else header
    if not token.strip():
        raise AuthError("missing admin API key (Authorization: Bearer <key>)", reason="missing")
    p = _platform(request).authenticator.bearer(token.strip())
    op = audit.current()
    if op is not None:
        op.identify(p)
    return p


def _require_admin(p: Principal) -> None:
    if not p.is_admin:
        raise PermissionDenied("this needs an admin account")


def _target_account(p: Principal, account_id: int | None) -> int:
    """The account a request acts on: its own unless an admin names another."""
    if account_id is None or account_id == p.account_id:
        return p.account_id
    if not p.is_admin:
        raise PermissionDenied("you may only manage your own account")
    return account_id


def _owned(p: Principal, obj, what: str):
    if obj.account_id != p.account_id and not p.is_admin:
        raise NotFound(f"{what} not found", reason=what)
    return obj


def _set_fields(model: BaseModel) -> dict:
    return model.model_dump(exclude_unset=True)


# -- routes ----------------------------------------------------------------------------

def build_admin_router() -> APIRouter:
    r = APIRouter(prefix="/admin/api", tags=["admin"], route_class=AdminRoute)
    P = Depends(principal)

    @r.get("/me", response_model=MeOut)
    def me(request: Request, p: Principal = P):
        return MeOut(account=AccountOut.model_validate(_platform(request).accounts.get(p.account_id)),
                     credential_id=p.credential_id)

    @r.get("/models", response_model=list[str])
    def models(request: Request, p: Principal = P):
        registry = getattr(request.app.state, "registry", None)
        return sorted(registry.names()) if registry is not None else []

    # accounts
    @r.get("/accounts", response_model=list[AccountOut])
    def list_accounts(request: Request, p: Principal = P):
        acc = _platform(request).accounts
        return acc.list() if p.is_admin else [acc.get(p.account_id)]

    @r.post("/accounts", response_model=AccountOut, status_code=201)
    def create_account(body: AccountCreate, request: Request, p: Principal = P):
        _require_admin(p)
        f = _set_fields(body)
        name, is_admin = f.pop("name"), f.pop("is_admin", False)
        return _platform(request).accounts.create(name, is_admin=is_admin, **f)

    @r.get("/accounts/{account_id}", response_model=AccountOut)
    def get_account(account_id: int, request: Request, p: Principal = P):
        if account_id != p.account_id and not p.is_admin:
            raise NotFound("account not found", reason="account")
        return _platform(request).accounts.get(account_id)

    @r.patch("/accounts/{account_id}", response_model=AccountOut)
    def update_account(account_id: int, body: AccountLimits, request: Request, p: Principal = P):
        _require_admin(p)
        return _platform(request).accounts.update_limits(account_id, **_set_fields(body))

    @r.post("/accounts/{account_id}/disable", response_model=AccountOut)
    def disable_account(account_id: int, request: Request, p: Principal = P):
        _require_admin(p)
        if account_id == p.account_id:
            raise InvalidParam("an admin cannot disable its own account", param="account_id")
        return _platform(request).accounts.disable(account_id)

    @r.post("/accounts/{account_id}/enable", response_model=AccountOut)
    def enable_account(account_id: int, request: Request, p: Principal = P):
        _require_admin(p)
        return _platform(request).accounts.enable(account_id)

    # credentials
    @r.get("/credentials", response_model=list[CredentialOut])
    def list_credentials(request: Request, account_id: int | None = None, all: bool = False,
                         p: Principal = P):
        cred = _platform(request).credentials
        if all and p.is_admin and account_id is None:
            return cred.list()
        return cred.list(_target_account(p, account_id))

    @r.post("/credentials", response_model=IssuedCredentialOut, status_code=201)
    def create_credential(body: CredentialCreate, request: Request, p: Principal = P):
        f = _set_fields(body)
        target = _target_account(p, f.pop("account_id", None))
        kind, label = f.pop("kind", "api_key"), f.pop("label", "")
        issued = _platform(request).credentials.create(target, kind, label=label, actor=p, **f)
        return IssuedCredentialOut(**issued.to_dict())

    @r.get("/credentials/{credential_id}", response_model=CredentialOut)
    def get_credential(credential_id: int, request: Request, p: Principal = P):
        return _owned(p, _platform(request).credentials.get(credential_id), "credential")

    @r.patch("/credentials/{credential_id}", response_model=CredentialOut)
    def update_credential(credential_id: int, body: Limits, request: Request, p: Principal = P):
        """Set a credential's own limits (they only narrow the account's). Owners may too."""
        cred = _platform(request).credentials
        _owned(p, cred.get(credential_id), "credential")
        return cred.update_limits(credential_id, actor=p, **_set_fields(body))

    @r.post("/credentials/{credential_id}/revoke", response_model=CredentialOut)
    def revoke_credential(credential_id: int, request: Request, p: Principal = P):
        cred = _platform(request).credentials
        _owned(p, cred.get(credential_id), "credential")
        return cred.revoke(credential_id)

    @r.delete("/credentials/{credential_id}", response_model=CredentialOut)
    def delete_credential(credential_id: int, request: Request, p: Principal = P):
        """Same as revoke: credentials are kept (revoked) so usage still names them."""
        return revoke_credential(credential_id, request, p)

    # services
    @r.get("/services", response_model=list[ServiceOut])
    def list_services(request: Request, account_id: int | None = None, all: bool = False,
                      p: Principal = P):
        svc = _platform(request).services
        if all and p.is_admin and account_id is None:
            return svc.list()
        return svc.list(_target_account(p, account_id))

    @r.post("/services", response_model=ServiceOut, status_code=201)
    def create_service(body: ServiceCreate, request: Request, p: Principal = P):
        f = _set_fields(body)
        target = _target_account(p, f.pop("account_id", None))
        return _platform(request).services.create(
            target, f.pop("endpoint"), f.pop("model"), f.pop("kind"), f.pop("description", ""),
            model_exists=_model_check(request), actor=p, **f)

    @r.get("/services/{service_id}", response_model=ServiceOut)
    def get_service(service_id: int, request: Request, p: Principal = P):
        return _owned(p, _platform(request).services.get(service_id), "service")

    @r.patch("/services/{service_id}", response_model=ServiceOut)
    def update_service(service_id: int, body: ServiceUpdate, request: Request, p: Principal = P):
        svc = _platform(request).services
        _owned(p, svc.get(service_id), "service")
        f = _set_fields(body)
        for k in ("model", "kind", "description"):
            if k in f and f[k] is None:
                raise InvalidParam(f"{k} cannot be null", param=k)
        return svc.update(service_id, model_exists=_model_check(request), actor=p, **f)

    @r.delete("/services/{service_id}", status_code=204)
    def delete_service(service_id: int, request: Request, p: Principal = P):
        svc = _platform(request).services
        _owned(p, svc.get(service_id), "service")
        svc.delete(service_id)
        return Response(status_code=204)

    # usage and quota
    @r.get("/usage", response_model=UsageOut)
    def usage(request: Request, account_id: int | None = None, all: bool = False,
              days: int = Query(7, ge=1, le=3660), since: dt.date | None = None,
              until: dt.date | None = None,
              group_by: Literal["day", "model", "service", "account"] = "day", p: Principal = P):
        plat = _platform(request)
        target = None if (all and p.is_admin and account_id is None) else _target_account(p, account_id)
        until = until or plat.quota.today()
        since = since or (until - dt.timedelta(days=days - 1))
        rows = plat.usage.usage_summary(target, since, until, group_by)
        return UsageOut(account_id=target, since=since, until=until, group_by=group_by,
                        rows=[UsageRowOut.model_validate(x) for x in rows])

    @r.get("/quota", response_model=QuotaOut)
    def quota(request: Request, account_id: int | None = None, p: Principal = P):
        return _platform(request).quota.status(_target_account(p, account_id))

    # content safety
    @r.get("/safety/lexicon", response_model=LexiconOut)
    def get_lexicon(request: Request, p: Principal = P):
        _require_admin(p)
        return _lexicon_out(request)

    @r.put("/safety/lexicon", response_model=LexiconOut)
    def put_lexicon(body: LexiconIn, request: Request, p: Principal = P):
        """Replace the whole lexicon at once, in the shared store (a new version): live on
        this replica for the next request, and on every other replica within
        WHARF_LEXICON_REFRESH_S (default 2 s), when it next checks the version. Also
        written to the lexicon file, which seeds the store of a fresh install."""
        _require_admin(p)
        replace_lexicon(request.app.state.lexicon, body.terms, getattr(request.app.state, "lexicon_path", None))
        return _lexicon_out(request)

    return r


def _lexicon_out(request: Request) -> LexiconOut:
    terms = request.app.state.safety.terms
    path = getattr(request.app.state, "lexicon_path", None)
    sync = getattr(request.app.state, "lexicon", None)
    return LexiconOut(terms=terms, count=len(terms), path=str(path) if path is not None else None,
                      version=sync.version if sync is not None else None)


# The admin API and the console share one error shape; their routers are built per app.
DIALECT = Dialect("admin", ("/admin/", "/console"), admin_error)
