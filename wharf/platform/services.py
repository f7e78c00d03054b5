"""Services: an account's named endpoint bound to a model and a kind (Qianfan's "API地址").

The platform never imports the engine: model names are checked with a
`model_exists(name) -> bool` callable that the caller passes in.

resolve_service(principal, endpoint, kind) errors:
  NotFound(reason="service")       unknown endpoint          (Qianfan 336005 "API name not exist")
  PermissionDenied                 another account's service  (Qianfan 6 / 336004)
  NotFound(reason="service_kind")  a chat service called on the completions path or the
                                   reverse: for the caller that URL does not exist either
                                   (map like reason="service"; the message names the right path).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from wharf.errors import Conflict, InvalidParam, NotFound, PermissionDenied
from wharf.platform import tenancy, validate
from wharf.platform.models import Service, utcnow
from wharf.platform.store import Store

KINDS = ("completions", "chat")
# Seed 001/004: the API address a user types ("test1") gets a random prefix, and the
# endpoint to call is "lbwxxxd4_test1", so two accounts can both choose "test1". What the
# user types follows Qianfan CreateService's urlSuffix rule.
URL_SUFFIX_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,18}[a-z0-9]")
TAG_ALPHABET = string.ascii_lowercase + string.digits
TAG_LENGTH = 8

ModelCheck = Callable[[str], bool]


@dataclass(frozen=True)
class ServiceInfo:
    id: int
    account_id: int
    endpoint: str               # what clients call: tag + "_" + url_suffix
    url_suffix: str | None      # what the user typed (None: created before prefixes, endpoint as typed)
    model: str
    kind: str
    description: str
    rpm: int | None
    tpm: int | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, s: Service) -> "ServiceInfo":
        return cls(id=s.id, account_id=s.account_id, endpoint=s.endpoint, url_suffix=s.url_suffix,
                   model=s.model, kind=s.kind,
                   description=s.description, rpm=s.rpm, tpm=s.tpm, created_at=s.created_at,
                   updated_at=s.updated_at)

    def to_dict(self) -> dict:
        return asdict(self)


def validate_url_suffix(url_suffix) -> str:
    if not isinstance(url_suffix, str) or not URL_SUFFIX_RE.fullmatch(url_suffix):
        raise InvalidParam("endpoint must be 2-20 characters of a-z, 0-9, '_' and '-', starting and ending "
                           "with a letter or digit (the API address you choose; a random prefix is added "
                           "to it)", param="endpoint")
    return url_suffix


def new_endpoint(url_suffix: str) -> str:
    """`test1` -> e.g. `lbwxxxd4_test1`."""
    return "".join(secrets.choice(TAG_ALPHABET) for _ in range(TAG_LENGTH)) + "_" + url_suffix


def _kind(kind) -> str:
    if kind not in KINDS:
        raise InvalidParam("kind must be 'completions' or 'chat'", param="kind")
    return kind


def _model(model, model_exists: ModelCheck | None) -> str:
    if not isinstance(model, str) or not model or len(model) > 128 or validate.has_lone_surrogate(model):
        raise InvalidParam("model must be a model name", param="model")
    if model_exists is not None and not model_exists(model):
        raise InvalidParam(f"unknown model {model!r}", param="model")
    return model


class Services:
    """`actor` (create, update): who asks, the Principal of an admin API call, or None for the
    operator (the local store); a non-admin actor is held to its account's ceilings
    (wharf/platform/tenancy.py). `max_per_account`: services an account may hold (None: no cap)."""

    def __init__(self, store: Store, model_exists: ModelCheck | None = None, *,
                 max_per_account: int | None = tenancy.DEFAULT_MAX_SERVICES_PER_ACCOUNT):
        self.store = store
        self.model_exists = model_exists
        self.max_per_account = max_per_account

    def create(self, account_id: int, url_suffix: str, model: str, kind: str, description: str = "", *,
               model_exists: ModelCheck | None = None, actor=None, **limits) -> ServiceInfo:
        """A service at endpoint `<random tag>_<url_suffix>` (ServiceInfo.endpoint).
        limits: rpm, tpm (None: none, 0: nothing allowed); those not given start at the
        account's ceilings (tenancy.admit_limits)."""
        validate_url_suffix(url_suffix)
        _kind(kind)
        _model(model, model_exists or self.model_exists)
        description = validate.text(description, "description", 1024)
        lim = validate.limits(limits, ("rpm", "tpm"))
        for _ in range(5):              # 36^8 tags: a clash is all but impossible, but cheap to survive
            endpoint = new_endpoint(url_suffix)
            try:
                with self.store.write() as s:
                    account = tenancy.lock_account(s, account_id)
                    if s.scalar(select(Service.id).where(Service.endpoint == endpoint)) is not None:
                        continue
                    tenancy.check_cap(s, account_id, "service", self.max_per_account)
                    lim = tenancy.admit_limits(account, "service", lim, None, actor)
                    now = utcnow()
                    row = Service(account_id=account_id, endpoint=endpoint, url_suffix=url_suffix, model=model,
                                  kind=kind, description=description, rpm=lim.get("rpm"), tpm=lim.get("tpm"),
                                  created_at=now, updated_at=now)
                    s.add(row)
                    s.flush()
                    return ServiceInfo.of(row)
            except IntegrityError:      # lost a race for the same endpoint: draw again
                continue
        raise Conflict("could not find a free endpoint; try again", param="endpoint")

    def list(self, account_id: int | None = None) -> list[ServiceInfo]:
        q = select(Service).order_by(Service.id)
        if account_id is not None:
            q = q.where(Service.account_id == account_id)
        with self.store.read() as s:
            return [ServiceInfo.of(x) for x in s.scalars(q)]

    def get(self, service_id: int) -> ServiceInfo:
        with self.store.read() as s:
            row = s.get(Service, service_id)
            if row is None:
                raise NotFound(f"service {service_id} not found", reason="service")
            return ServiceInfo.of(row)

    def get_by_endpoint(self, endpoint: str) -> ServiceInfo:
        with self.store.read() as s:
            row = s.scalar(select(Service).where(Service.endpoint == endpoint))
            if row is None:
                raise NotFound(f"service {endpoint!r} not found", reason="service")
            return ServiceInfo.of(row)

    def update(self, service_id: int, *, model_exists: ModelCheck | None = None, actor=None,
               **fields) -> ServiceInfo:
        """Change model, kind, description, rpm, tpm (the endpoint is the service's identity);
        a tenant's rpm / tpm only within its account's ceilings (tenancy.admit_limits)."""
        allowed = {"model", "kind", "description", "rpm", "tpm"}
        for k in fields:
            if k not in allowed:
                raise InvalidParam(f"field {k} cannot be changed", param=k)
        if "model" in fields:
            _model(fields["model"], model_exists or self.model_exists)
        if "kind" in fields:
            _kind(fields["kind"])
        if "description" in fields:
            fields["description"] = validate.text(fields["description"], "description", 1024)
        for k in ("rpm", "tpm"):
            if k in fields:
                validate.limit(fields[k], k)
        with self.store.write() as s:
            row = s.get(Service, service_id)
            if row is None:
                raise NotFound(f"service {service_id} not found", reason="service")
            limits = {k: fields.pop(k) for k in ("rpm", "tpm") if k in fields}
            if limits:
                account = tenancy.lock_account(s, row.account_id)
                fields.update(tenancy.admit_limits(account, "service", limits,
                                                   {"rpm": row.rpm, "tpm": row.tpm}, actor))
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = utcnow()
            s.flush()
            return ServiceInfo.of(row)

    def delete(self, service_id: int) -> None:
        with self.store.write() as s:
            row = s.get(Service, service_id)
            if row is None:
                raise NotFound(f"service {service_id} not found", reason="service")
            s.delete(row)

    def resolve_service(self, principal, endpoint: str, kind: str) -> ServiceInfo:
        """The service a request names, checked against the caller and the URL's kind.

        Only the owning account may call a service (admins included: an admin who wants
        to try another account's model creates a service of their own).
        """
        with self.store.read() as s:
            row = s.scalar(select(Service).where(Service.endpoint == endpoint))
            if row is None:
                raise NotFound(f"service {endpoint!r} not found", reason="service")
            info = ServiceInfo.of(row)
        if info.account_id != principal.account_id:
            raise PermissionDenied(f"no permission to use service {endpoint!r}")
        if info.kind != kind:
            raise NotFound(f"service {endpoint!r} is a {info.kind} service; call it on the "
                           f"{info.kind} path", reason="service_kind")
        return info
