"""Accounts: create, list, get, disable/enable, limits; first-start admin bootstrap."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from wharf.errors import Conflict, InvalidParam, NotFound
from wharf.platform import tenancy, validate
from wharf.platform.models import Account
from wharf.platform.store import Store

# None: no limit (for rpm ... max_concurrency and the quotas: the platform default, WHARF_DEFAULT_*,
# if one is set); 0: nothing allowed; n > 0: at most n. The ceilings (key_*, service_*) bound
# what the account may give its own credentials and services (wharf/platform/tenancy.py).
LIMIT_FIELDS = ("quota_chars_per_day", "quota_tokens_per_day", "rpm", "tpm", "qps", "max_concurrency",
                *tenancy.CEILING_FIELDS)
STATUSES = ("active", "disabled")


@dataclass(frozen=True)
class AccountInfo:
    id: int
    name: str
    status: str
    is_admin: bool
    created_at: dt.datetime
    quota_chars_per_day: int | None
    quota_tokens_per_day: int | None
    rpm: int | None
    tpm: int | None
    qps: int | None
    max_concurrency: int | None
    key_rpm: int | None = None
    key_tpm: int | None = None
    key_qps: int | None = None
    key_max_concurrency: int | None = None
    service_rpm: int | None = None
    service_tpm: int | None = None

    @classmethod
    def of(cls, a: Account) -> "AccountInfo":
        return cls(id=a.id, name=a.name, status=a.status, is_admin=a.is_admin, created_at=a.created_at,
                   **{k: getattr(a, k) for k in LIMIT_FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)


class Accounts:
    def __init__(self, store: Store):
        self.store = store

    def create(self, name: str, *, is_admin: bool = False, **limits) -> AccountInfo:
        validate.name(name)
        lim = validate.limits(limits, LIMIT_FIELDS)
        try:
            with self.store.write() as s:
                if s.scalar(select(Account.id).where(Account.name == name)) is not None:
                    raise Conflict(f"account {name!r} already exists", param="name")
                a = Account(name=name, is_admin=bool(is_admin), status="active", **lim)
                s.add(a)
                s.flush()
                return AccountInfo.of(a)
        except IntegrityError:
            raise Conflict(f"account {name!r} already exists", param="name") from None

    def list(self) -> list[AccountInfo]:
        with self.store.read() as s:
            return [AccountInfo.of(a) for a in s.scalars(select(Account).order_by(Account.id))]

    def get(self, account_id: int) -> AccountInfo:
        with self.store.read() as s:
            a = s.get(Account, account_id)
            if a is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            return AccountInfo.of(a)

    def get_by_name(self, name: str) -> AccountInfo:
        with self.store.read() as s:
            a = s.scalar(select(Account).where(Account.name == name))
            if a is None:
                raise NotFound(f"account {name!r} not found", reason="account")
            return AccountInfo.of(a)

    def resolve(self, ref: int | str) -> AccountInfo:
        """An account by id (int or all-digit string) or by name."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return self.get(int(ref))
        return self.get_by_name(ref)

    def set_status(self, account_id: int, status: str) -> AccountInfo:
        if status not in STATUSES:
            raise InvalidParam(f"status must be one of {STATUSES}", param="status")
        with self.store.write() as s:
            a = s.get(Account, account_id)
            if a is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            a.status = status
            s.flush()
            return AccountInfo.of(a)

    def disable(self, account_id: int) -> AccountInfo:
        return self.set_status(account_id, "disabled")

    def enable(self, account_id: int) -> AccountInfo:
        return self.set_status(account_id, "active")

    def update_limits(self, account_id: int, **limits) -> AccountInfo:
        """Set any of LIMIT_FIELDS (None clears a limit, 0 allows nothing). Fields not given
        are kept. Setting a ceiling (key_*, service_*) also brings the account's active
        credentials / services above it (or without a limit) down to it. An operator's call
        (the admin API checks that the caller is an admin)."""
        lim = validate.limits(limits, LIMIT_FIELDS)
        with self.store.write() as s:
            a = s.get(Account, account_id)
            if a is None:
                raise NotFound(f"account {account_id} not found", reason="account")
            for k, v in lim.items():
                setattr(a, k, v)
            tenancy.apply_ceilings(s, a, {k: v for k, v in lim.items() if k in tenancy.CEILING_FIELDS})
            s.flush()
            return AccountInfo.of(a)

    def count(self) -> int:
        with self.store.read() as s:
            return s.scalar(select(func.count(Account.id))) or 0


def ensure_admin(store: Store, name: str = "admin") -> str | None:
    """On first start (no account at all) create an admin account and an API key.

    Returns the plain key exactly once (the serve command prints it), or None
    when accounts already exist. Safe to call from several replicas at once.
    """
    from wharf.platform.credentials import Credentials

    if Accounts(store).count() > 0:
        return None
    try:
        with store.write() as s:
            if s.scalar(select(func.count(Account.id))):
                return None
            a = Account(name=name, is_admin=True, status="active")
            s.add(a)
            s.flush()
            issued = Credentials(store, None).create_in(s, a.id, "api_key", label="bootstrap admin key")
            return issued.secret
    except IntegrityError:          # another replica bootstrapped at the same moment
        return None
