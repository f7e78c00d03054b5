"""Credentials of every kind: create (secret shown once), list, revoke, last-used.

kinds and what the caller gets back once:
  api_key      OpenAI / WeLM bearer key "wk-<43 chars>"           (stored: sha256 hash)
  qianfan_app  Qianfan app API Key (client_id) + Secret Key      (stored: Fernet-encrypted SK)
  qianfan_iam  Qianfan IAM Access Key + Secret Key (BCE signing) (stored: Fernet-encrypted SK)
  sensenova    SenseNova access key id + secret (JWT HS256)      (stored: Fernet-encrypted secret)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
import threading
import time
from dataclasses import asdict, dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from wharf.errors import Internal, InvalidParam, NotFound
from wharf.platform import tenancy, validate
from wharf.platform.models import Credential, utcnow
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

KINDS = ("api_key", "qianfan_app", "qianfan_iam", "sensenova")
LIMIT_FIELDS = ("rpm", "tpm", "qps", "max_concurrency")
API_KEY_PREFIX = "wk-"
TOUCH_INTERVAL_S = 60.0

_ALNUM = string.ascii_letters + string.digits


def hash_key(key: str) -> str:
    # surrogatepass: a string with a lone surrogate (JSON "\\ud800") still hashes (to a key
    # that matches nothing) instead of raising UnicodeEncodeError.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown about a credential: never a secret."""

    id: int
    account_id: int
    kind: str
    label: str
    public_id: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    rpm: int | None
    tpm: int | None
    qps: int | None
    max_concurrency: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def of(cls, c: Credential) -> "CredentialInfo":
        return cls(id=c.id, account_id=c.account_id, kind=c.kind, label=c.label, public_id=c.public_id,
                   created_at=c.created_at, revoked_at=c.revoked_at, last_used_at=c.last_used_at,
                   **{k: getattr(c, k) for k in LIMIT_FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IssuedCredential:
    """Returned by create() only. `public_id` is the API Key / Access Key / access key id
    (for api_key: a display prefix); `secret` is the whole API key or the Secret Key."""

    info: CredentialInfo
    public_id: str
    secret: str

    def __repr__(self) -> str:
        return f"IssuedCredential(info={self.info!r}, public_id={self.public_id!r}, secret=<hidden>)"

    def to_dict(self) -> dict:
        d = {"credential": self.info.to_dict(), "public_id": self.public_id, "secret": self.secret}
        names = {"api_key": ("key_prefix", "api_key"), "qianfan_app": ("api_key", "secret_key"),
                 "qianfan_iam": ("access_key", "secret_key"),
                 "sensenova": ("access_key_id", "secret_access_key")}[self.info.kind]
        d[names[0]], d[names[1]] = self.public_id, self.secret
        return d


class Credentials:
    """`actor` (create, update_limits): who asks, the Principal of an admin API call, or None
    for the operator (the local store); a non-admin actor is held to its account's ceilings
    (wharf/platform/tenancy.py). `max_per_account`: active credentials an account may hold
    (None: no cap)."""

    def __init__(self, store: Store, box: SecretBox | None, *,
                 max_per_account: int | None = tenancy.DEFAULT_MAX_CREDENTIALS_PER_ACCOUNT):
        self.store = store
        self.box = box
        self.max_per_account = max_per_account
        self._touched: dict[int, float] = {}
        self._touch_lock = threading.Lock()

    # -- create -------------------------------------------------------------
    def create(self, account_id: int, kind: str, *, label: str = "", actor=None, **limits) -> IssuedCredential:
        with self.store.write() as s:
            return self.create_in(s, account_id, kind, label=label, actor=actor, **limits)

    def create_in(self, s: Session, account_id: int, kind: str, *, label: str = "", actor=None,
                  **limits) -> IssuedCredential:
        """Limits not given start at the account's ceilings (tenancy.admit_limits)."""
        if kind not in KINDS:
            raise InvalidParam(f"kind must be one of {', '.join(KINDS)}", param="kind")
        label = validate.text(label, "label", 128)
        lim = validate.limits(limits, LIMIT_FIELDS)
        account = tenancy.lock_account(s, account_id)
        tenancy.check_cap(s, account_id, "credential", self.max_per_account)
        lim = tenancy.admit_limits(account, "credential", lim, None, actor)
        if kind == "api_key":
            secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
            public_id = secret[:11]
            row = Credential(secret_hash=hash_key(secret))
        else:
            if self.box is None:
                raise Internal("no secret box configured")
            if kind == "qianfan_app":      # Baidu's shapes: 24-char API Key, 32-char Secret Key
                public_id, secret = _rand(_ALNUM, 24), _rand(_ALNUM, 32)
            elif kind == "qianfan_iam":    # 32 hex AK / SK
                public_id, secret = secrets.token_hex(16), secrets.token_hex(16)
            else:                          # sensenova
                public_id, secret = _rand(string.ascii_uppercase + string.digits, 32), _rand(_ALNUM, 32)
            row = Credential(secret_encrypted=self.box.encrypt(secret))
        row.account_id, row.kind, row.label, row.public_id = account_id, kind, label, public_id
        row.created_at = utcnow()
        for k, v in lim.items():
            setattr(row, k, v)
        s.add(row)
        s.flush()
        return IssuedCredential(CredentialInfo.of(row), public_id, secret)

    # -- read ---------------------------------------------------------------
    def list(self, account_id: int | None = None, *, include_revoked: bool = True) -> list[CredentialInfo]:
        q = select(Credential).order_by(Credential.id)
        if account_id is not None:
            q = q.where(Credential.account_id == account_id)
        if not include_revoked:
            q = q.where(Credential.revoked_at.is_(None))
        with self.store.read() as s:
            return [CredentialInfo.of(c) for c in s.scalars(q)]

    def get(self, credential_id: int) -> CredentialInfo:
        with self.store.read() as s:
            c = s.get(Credential, credential_id)
            if c is None:
                raise NotFound(f"credential {credential_id} not found", reason="credential")
            return CredentialInfo.of(c)

    def own_secret(self, account_id: int, credential_id, kind: str) -> tuple[str, str]:
        """(public id, secret) of one of `account_id`'s own active credentials of `kind`, which
        a client of it signs with (the console's playground does). Another account's, a revoked
        one, one of another kind or an id that is no number: NotFound, as if there were none."""
        ref = str(credential_id)
        with self.store.read() as s:
            # ASCII digits of at most 18: int() takes other digits, and the store 64-bit ids only.
            c = s.get(Credential, int(ref)) if ref.isascii() and ref.isdigit() and len(ref) <= 18 else None
            if c is None or c.account_id != account_id or c.kind != kind or c.revoked_at is not None:
                raise NotFound(f"pick one of your active {kind} credentials", reason="credential")
            if self.box is None:
                raise Internal("no secret box configured")
            return c.public_id, self.box.decrypt(c.secret_encrypted or "")

    # -- change -------------------------------------------------------------
    def revoke(self, credential_id: int) -> CredentialInfo:
        """Revoke now; the next request with it fails. Revoking twice keeps the first time."""
        with self.store.write() as s:
            c = s.get(Credential, credential_id)
            if c is None:
                raise NotFound(f"credential {credential_id} not found", reason="credential")
            if c.revoked_at is None:
                c.revoked_at = utcnow()
            s.flush()
            return CredentialInfo.of(c)

    def update_limits(self, credential_id: int, *, actor=None, **limits) -> CredentialInfo:
        """Set the credential's own limits (None: none, 0: nothing allowed); a tenant only
        within its account's ceilings (tenancy.admit_limits)."""
        lim = validate.limits(limits, LIMIT_FIELDS)
        with self.store.write() as s:
            c = s.get(Credential, credential_id)
            if c is None:
                raise NotFound(f"credential {credential_id} not found", reason="credential")
            account = tenancy.lock_account(s, c.account_id)
            lim = tenancy.admit_limits(account, "credential", lim,
                                       {k: getattr(c, k) for k in LIMIT_FIELDS}, actor)
            for k, v in lim.items():
                setattr(c, k, v)
            s.flush()
            return CredentialInfo.of(c)

    def touch(self, credential_id: int) -> None:
        """Record use; writes at most once a minute per credential per process."""
        now = time.monotonic()
        with self._touch_lock:
            last = self._touched.get(credential_id)
            if last is not None and now - last < TOUCH_INTERVAL_S:
                return
            self._touched[credential_id] = now
        try:
            with self.store.write() as s:
                s.execute(update(Credential).where(Credential.id == credential_id)
                          .values(last_used_at=utcnow()))
        except Exception:          # best effort: never fail a request for this
            pass
