"""What a tenant may do to its own limits: the one place that decides it.

Two kinds of actor change credentials and services:

  the operator  an admin account's key (admin API, the console signed in as an admin,
                `wharf ... --server`), or the local store (`wharf keys ...`, tests):
                `actor=None` or an actor whose `is_admin` is true
  a tenant      any other account's key, on its own account (admin API, console)

Limits (rpm, tpm, qps, max_concurrency; services: rpm, tpm): None means no limit,
0 means nothing is allowed (every request refused), n > 0 means at most n.

Ceilings. Each account has a ceiling for the limits of its credentials (key_rpm,
key_tpm, key_qps, key_max_concurrency) and of its services (service_rpm, service_tpm),
None = no ceiling. An operator sets them directly (PATCH /admin/api/accounts/{id}, `wharf
accounts limits`), which also brings every active credential / service of the account
above the new ceiling (or without a limit) down to it; and every limit an operator sets
on one of the account's credentials or services tightens the account's ceiling for that
field to it (min), so a tenant can never give another of its keys more than its provider
gave any one of them. A tenant:

  - creating a credential or service: each limit not given (or null) starts at the
    ceiling; one above the ceiling is refused (PermissionDenied, 403);
  - changing one: it may lower a limit, or set any value up to the ceiling; it may never
    raise a limit above both its current value and the ceiling, nor clear (null) a limit
    under a ceiling.

Operators are not held to ceilings: what they set is what the object gets (and it tightens
the ceiling). A limit the operator left unset on a credential it creates also starts at
the ceiling.

Caps. At most `max_credentials` active (not revoked) credentials and `max_services`
services per account, whoever creates them (Settings.max_credentials_per_account, 50, and
max_services_per_account, 100; None: no cap, 0: none may be created). The count and the
insert run in one write transaction that locks the account row (SELECT ... FOR UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent creates cannot pass the cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from wharf.errors import NotFound, PermissionDenied, RateLimited
from wharf.platform.limits import Limits
from wharf.platform.models import Account, Credential, Service

DEFAULT_MAX_CREDENTIALS_PER_ACCOUNT = 50
DEFAULT_MAX_SERVICES_PER_ACCOUNT = 100

# object kind -> {object's limit field: the account's ceiling column}
CEILINGS: dict[str, dict[str, str]] = {
    "credential": {"rpm": "key_rpm", "tpm": "key_tpm", "qps": "key_qps",
                   "max_concurrency": "key_max_concurrency"},
    "service": {"rpm": "service_rpm", "tpm": "service_tpm"},
}
CEILING_FIELDS = tuple(c for kind in CEILINGS.values() for c in kind.values())
_WHAT = {"credential": "credential", "service": "service"}


def is_operator(actor) -> bool:
    return actor is None or bool(getattr(actor, "is_admin", False))


def lock_account(s: Session, account_id) -> Account:
    """The account row, locked for the rest of this write transaction."""
    if not isinstance(account_id, int) or isinstance(account_id, bool):
        raise NotFound(f"account {account_id} not found", reason="account")
    a = s.get(Account, account_id, with_for_update=True)
    if a is None:
        raise NotFound(f"account {account_id} not found", reason="account")
    return a


def check_cap(s: Session, account_id: int, kind: str, cap: int | None) -> None:
    """Refuse a new credential / service beyond the per-account cap (the account row is
    locked by the caller: lock_account)."""
    if cap is None:
        return
    if kind == "credential":
        n = s.scalar(select(func.count(Credential.id)).where(Credential.account_id == account_id,
                                                             Credential.revoked_at.is_(None)))
        setting = "WHARF_MAX_CREDENTIALS_PER_ACCOUNT"
        what = "active credentials"
    else:
        n = s.scalar(select(func.count(Service.id)).where(Service.account_id == account_id))
        setting = "WHARF_MAX_SERVICES_PER_ACCOUNT"
        what = "services"
    if (n or 0) >= cap:
        raise PermissionDenied(f"account {account_id} already has {n} {what}, the most allowed "
                               f"({setting}={cap}); revoke or delete one first")


def _fmt(v) -> str:
    return "null (no limit)" if v is None else str(v)


def admit_limits(account: Account, kind: str, requested: Mapping[str, int | None],
                 current: Mapping[str, int | None] | None, actor) -> dict[str, int | None]:
    """The limits to write on a credential / service, or PermissionDenied.

    `requested`: the validated fields the caller gave (absent = not given); `current`: the
    object's limits now (None when creating). Returns the fields to set (on create, every
    field with a ceiling or given). For an operator it tightens the account's ceilings
    (the caller's session writes them with the object)."""
    fields = CEILINGS[kind]
    out: dict[str, int | None] = {}
    if is_operator(actor):
        for f, col in fields.items():
            if f in requested:
                v = requested[f]
                out[f] = v
                ceiling = getattr(account, col)
                if v is not None and (ceiling is None or v < ceiling):
                    setattr(account, col, v)
            elif current is None and getattr(account, col) is not None:
                out[f] = getattr(account, col)      # a new object starts at the ceiling
        return out
    for f, col in fields.items():
        ceiling = getattr(account, col)
        if current is None:                            # creating
            v = requested.get(f)
            if v is None:
                if ceiling is not None:
                    out[f] = ceiling
                elif f in requested:
                    out[f] = None
                continue
            if ceiling is not None and v > ceiling:
                raise PermissionDenied(f"{f} cannot be above {ceiling}, the most your provider allows "
                                       f"for a {_WHAT[kind]} of this account", param=f)
            out[f] = v
            continue
        if f not in requested:
            continue
        v, now = requested[f], current.get(f)
        if v == now or ceiling is None:
            out[f] = v
            continue
        if v is None:
            raise PermissionDenied(f"{f} cannot be cleared: your provider limits it to at most {ceiling}",
                                   param=f)
        if v <= ceiling or (now is not None and v <= now):
            out[f] = v
            continue
        raise PermissionDenied(f"{f} cannot be raised from {_fmt(now)} to {v}: your provider limits it "
                               f"to at most {ceiling}", param=f)
    return out


def apply_ceilings(s: Session, account: Account, changed: Mapping[str, int | None]) -> None:
    """An operator set some of the account's ceilings: bring the account's active
    credentials and its services above them (or without a limit) down to them."""
    for kind, fields in CEILINGS.items():
        model = Credential if kind == "credential" else Service
        for f, col in fields.items():
            if col not in changed or changed[col] is None:
                continue
            ceiling = changed[col]
            column = getattr(model, f)
            q = select(model).where(model.account_id == account.id, or_(column.is_(None), column > ceiling))
            if model is Credential:
                q = q.where(Credential.revoked_at.is_(None))
            # Row by row, not one bulk UPDATE: each lowered limit is a change the audit
            # log sees (an account holds a few dozen credentials and services at most).
            for row in s.scalars(q):
                setattr(row, f, ceiling)


# -- limits at request time ------------------------------------------------------------

# How long a client refused by a limit of 0 is told to wait: nothing will change until an
# operator changes the limit.
NOTHING_ALLOWED_RETRY_S = 60.0
_REASON = {"max_concurrency": "concurrency", "qps": "qps", "rpm": "rpm", "tpm": "tpm"}


@dataclass(frozen=True)
class LimitValues:
    """Stored limits of one scope as they are: None = no limit, 0 = nothing allowed."""

    rpm: int | None = None
    tpm: int | None = None
    qps: int | None = None
    max_concurrency: int | None = None


def rate_limits(rpm=None, tpm=None, qps=None, max_concurrency=None, *, scope: str = "") -> Limits | None:
    """Stored limits -> the rate limiter's Limits (None when there are none). A limit of 0
    refuses the request here, RateLimited with that limit's reason (checked in the
    limiter's order: concurrency, qps, rpm, tpm), without touching any bucket."""
    vals = {"max_concurrency": max_concurrency, "qps": qps, "rpm": rpm, "tpm": tpm}
    for name, v in vals.items():
        if v == 0:
            exc = RateLimited(f"Rate limit exceeded ({_REASON[name]}): the {scope or 'caller'}'s {name} "
                              "limit is 0, so no request is allowed.", reason=_REASON[name],
                              retry_after=NOTHING_ALLOWED_RETRY_S)
            exc.scope = scope  # type: ignore[attr-defined]
            raise exc
    given = {k: v for k, v in vals.items() if v is not None}
    return Limits(**given) if given else None
