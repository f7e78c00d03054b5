"""A credential's lifecycle and reach: expiry, allow-lists of models and services, rotation.

  expires_at        refused from then on, in every scheme (auth._principal: AuthError
                    "expired", each dialect's own expired-credential answer)
  allowed_models    the model names it may call (the name sent or the model it resolves
                    to); None: any
  allowed_services  the service ids it may call (Qianfan endpoints); None: any
  quota_chars_per_day / quota_tokens_per_day
                    its own daily quota on top of its account's (None: none of its own,
                    0: nothing allowed), enforced by wharf/platform/quota.py with the
                    account's in one reservation
  rotate            a new credential (new secret) with the same account, label, limits and
                    reach; the old one stays valid for the grace period the operator
                    chooses, then expires (the same expires_at rule, nothing else to check);
                    both count on the same daily quota counters (quota_root_id)

The allow-lists are checked once, in the policy path (api/pipeline.py calls `check`),
so every dialect refuses the same way: PermissionDenied, in that dialect's shape.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

from sqlalchemy import select

from wharf.errors import InvalidParam, NotFound, PermissionDenied
from wharf.platform.credentials import LIMIT_FIELDS, Credentials, IssuedCredential
from wharf.platform.models import Credential, utcnow
from wharf.platform.store import Store

MAX_LIST = 100
MAX_GRACE = dt.timedelta(days=365)
QUOTA_FIELDS = ("quota_chars_per_day", "quota_tokens_per_day")
MAX_QUOTA = 2 ** 53        # well below the quota book's "no limit" bound


@dataclass(frozen=True)
class KeyScope:
    credential_id: int
    expires_at: dt.datetime | None
    allowed_models: list[str] | None
    allowed_services: list[int] | None
    quota_chars_per_day: int | None = None
    quota_tokens_per_day: int | None = None

    @classmethod
    def of(cls, c) -> "KeyScope":
        return cls(c.id, c.expires_at, decode_list(c.allowed_models), decode_list(c.allowed_services),
                   c.quota_chars_per_day, c.quota_tokens_per_day)

    def to_dict(self) -> dict:
        return asdict(self)


def decode_list(raw: str | None) -> list | None:
    return None if raw is None else json.loads(raw)


def _models(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(
            isinstance(m, str) and 0 < len(m) <= 128 for m in value):
        raise InvalidParam(f"allowed_models must be a list of at most {MAX_LIST} model names", param="allowed_models")
    return json.dumps(sorted(set(value)))


def _services(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**31 for i in value):
        raise InvalidParam(f"allowed_services must be a list of at most {MAX_LIST} service ids",
                           param="allowed_services")
    return json.dumps(sorted(set(value)))


def _quota(value, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise InvalidParam(f"{param} must be null (none of its own) or an integer from 0 to {MAX_QUOTA}",
                           param=param)
    return value


def _aware(value: dt.datetime | None, param: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise InvalidParam(f"{param} must be a time", param=param)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def check(principal, model_names: tuple[str, ...], service_id: int | None) -> None:
    """PermissionDenied unless the credential may use this model (any of its names) and
    service. The lists ride on the Principal (read with the credential, no extra query)."""
    models = principal.allowed_models
    if models is not None and not any(m in models for m in model_names):
        raise PermissionDenied("this credential may not use this model", param="model")
    services = principal.allowed_services
    if services is not None and service_id is not None and service_id not in services:
        raise PermissionDenied("this credential may not use this service")


class KeyScopes:
    def __init__(self, store: Store, credentials: Credentials):
        self.store = store
        self.credentials = credentials

    def get(self, credential_id: int) -> KeyScope:
        with self.store.read() as s:
            return KeyScope.of(self._row(s, credential_id))

    def list(self, account_id: int | None = None) -> list[KeyScope]:
        """Every credential's scope, oldest first (one account's, or everyone's with None):
        one query where a list of keys shows its expiry and allow-lists."""
        q = select(Credential).order_by(Credential.id)
        if account_id is not None:
            q = q.where(Credential.account_id == account_id)
        with self.store.read() as s:
            return [KeyScope.of(c) for c in s.scalars(q)]

    def set(self, credential_id: int, **fields) -> KeyScope:
        """Set any of expires_at, allowed_models, allowed_services and the daily quotas
        (None clears one)."""
        unknown = set(fields) - {"expires_at", "allowed_models", "allowed_services", *QUOTA_FIELDS}
        if unknown:
            raise InvalidParam(f"unknown field {sorted(unknown)[0]}", param=sorted(unknown)[0])
        values = {}
        if "expires_at" in fields:
            values["expires_at"] = _aware(fields["expires_at"], "expires_at")
        if "allowed_models" in fields:
            values["allowed_models"] = _models(fields["allowed_models"])
        if "allowed_services" in fields:
            values["allowed_services"] = _services(fields["allowed_services"])
        for name in QUOTA_FIELDS:
            if name in fields:
                values[name] = _quota(fields[name], name)
        with self.store.write() as s:
            c = self._row(s, credential_id)
            for k, v in values.items():
                setattr(c, k, v)
            s.flush()
            return KeyScope.of(c)

    def rotate(self, credential_id: int, *, grace: dt.timedelta, actor=None) -> IssuedCredential:
        """A new credential in the old one's place; the old one expires after `grace` (at
        once with 0; never later than it would have anyway)."""
        if not dt.timedelta(0) <= grace <= MAX_GRACE:
            raise InvalidParam("grace must be 0 to 365 days", param="grace_s")
        with self.store.write() as s:
            old = self._row(s, credential_id)
            if old.revoked_at is not None:
                raise InvalidParam("a revoked credential cannot be rotated", param="credential_id")
            issued = self.credentials.create_in(s, old.account_id, old.kind, label=old.label, actor=actor,
                                                **{k: getattr(old, k) for k in LIMIT_FIELDS})
            new = s.get(Credential, issued.info.id)
            new.expires_at, new.allowed_models, new.allowed_services = (old.expires_at, old.allowed_models,
                                                                        old.allowed_services)
            new.quota_chars_per_day, new.quota_tokens_per_day = old.quota_chars_per_day, old.quota_tokens_per_day
            # The same day's counters as the old secret: a grace period is not a second quota.
            new.quota_root_id = old.quota_root_id or old.id
            end = utcnow() + grace
            old.expires_at = end if old.expires_at is None else min(old.expires_at, end)
            s.flush()
            return issued

    @staticmethod
    def _row(s, credential_id: int) -> Credential:
        c = s.get(Credential, credential_id)
        if c is None:
            raise NotFound(f"credential {credential_id} not found", reason="credential")
        return c
