"""SQLAlchemy 2 typed models: the store's schema.

The Alembic migrations in wharf/platform/migrations/versions/ create exactly
this schema (a test compares them); change both together.
All timestamps are stored as naive UTC and read back as aware UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (same on SQLite and PostgreSQL)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC datetimes")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")   # active | disabled
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    quota_chars_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    qps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Ceilings (None: none) on the limits of the account's own credentials and services:
    # what the account may give them itself (wharf/platform/tenancy.py).
    key_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_qps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    service_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    service_tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Prompts and outputs are stored only for an account that opted in, for this many
    # days (wharf/platform/request_content.py); NULL: never stored.
    content_retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Credential(Base):
    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))   # api_key | qianfan_app | qianfan_iam | sensenova
    label: Mapped[str] = mapped_column(String(128), default="")
    # The AK / access key id / client id, or the display prefix of an API key.
    public_id: Mapped[str] = mapped_column(String(64), unique=True)
    # api_key only: sha256 hex of the whole key (keys are 256-bit random, so no salt/KDF needed).
    secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    # Fernet token of the secret, for schemes where the server must know it (HMAC, JWT, OAuth).
    secret_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    qps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Lifecycle (wharf/platform/key_scope.py): refused from expires_at on (a rotated key's
    # grace ends there); allow-lists as JSON lists of model names / service ids, NULL: any.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    allowed_models: Mapped[str | None] = mapped_column(Text, nullable=True)
    allowed_services: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Its own daily quota, on top of the account's (wharf/platform/quota.py): NULL: none of
    # its own, 0: nothing allowed. Counted on the counters of quota_root_id: the first
    # credential of its rotation line (NULL: itself), so a rotation's grace period never
    # gives a second day's worth.
    quota_chars_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_root_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AccessToken(Base):
    """Qianfan OAuth access tokens, kept in the store (hashed) so they survive
    restarts and work on every replica."""

    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class Service(Base):
    __tablename__ = "services"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(64), unique=True)
    # What the user typed; endpoint = random tag + "_" + it. NULL: made before prefixes (0004).
    url_suffix: Mapped[str | None] = mapped_column(String(20), nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))   # completions | chat
    description: Mapped[str] = mapped_column(String(1024), default="")
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    __tablename__ = "usage_records"
    # The request log's filters (wharf/platform/request_log.py) walk one of these newest
    # first: every list is ordered by (created_at, id), the keyset cursor.
    __table_args__ = (Index("ix_usage_records_account_day", "account_id", "day"),
                      Index("ix_usage_records_created", "created_at", "id"),
                      Index("ix_usage_records_account_created", "account_id", "created_at", "id"),
                      Index("ix_usage_records_credential_created", "credential_id", "created_at", "id"),
                      Index("ix_usage_records_service_created", "service_id", "created_at", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    # No foreign keys: usage outlives deleted services and is never blocked by them.
    account_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    dialect: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    generated_chars: Mapped[int] = mapped_column(Integer, default=0)
    n: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(64))   # ok | cancelled | blocked | error:<kind>
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    day: Mapped[dt.date] = mapped_column(Date)


class RequestContent(Base):
    """A request's prompt and outputs, kept only for an account that opted in, until
    expires_at (its retention then). No foreign key to usage_records: either may be
    pruned first."""

    __tablename__ = "request_contents"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    prompt: Mapped[str] = mapped_column(Text)          # the prompt, or the chat's messages as JSON
    outputs: Mapped[str] = mapped_column(Text)         # JSON list: each choice's text


class QuotaUsage(Base):
    __tablename__ = "quota_usage"
    __table_args__ = (UniqueConstraint("account_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    chars_used: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    chars_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class CredentialQuotaUsage(Base):
    """A credential's daily counters, as quota_usage is an account's (keyed by the
    credential's quota_root_id, or its own id)."""

    __tablename__ = "credential_quota_usage"
    __table_args__ = (UniqueConstraint("credential_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    chars_used: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    chars_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class QuotaReservation(Base):
    __tablename__ = "quota_reservations"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # The credential that asked: its daily counters (those of its quota_root_id) are held
    # too, within its own limits; NULL: the account's only.
    credential_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    day: Mapped[dt.date] = mapped_column(Date)
    chars: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ConsoleSession(Base):
    """Web console sign-ins, shared by every replica. The cookie value (a 256-bit random
    id) is stored only as its SHA-256: a leaked database gives no live session; the
    user's API key is Fernet-encrypted with the server key, as credential secrets are."""

    __tablename__ = "console_sessions"

    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    key_encrypted: Mapped[str] = mapped_column(Text)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SafetyLexicon(Base):
    """The content-safety lexicon every replica enforces: a single row (id 1), the terms as
    one JSON list and a version bumped on each replacement. One row, not a row per term,
    because the lexicon is only ever replaced whole: a replacement is one UPDATE (no
    reader sees half of it) and a replica's check is one primary-key read of `version`."""

    __tablename__ = "safety_lexicon"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    terms_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """One change made through the admin API or the CLI (wharf/platform/audit.py). No
    foreign keys: the log outlives what it names. before/after: JSON of the changed
    columns, never a secret."""

    __tablename__ = "audit_log"
    # Lists are newest first by id: everyone's (the primary key), or one account's.
    __table_args__ = (Index("ix_audit_log_account", "account_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(16))           # credential | local CLI
    actor_account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor_credential_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(256))         # the API call or CLI command
    object_type: Mapped[str] = mapped_column(String(16))     # account | credential | service | lexicon
    object_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)   # the object's account
    action: Mapped[str] = mapped_column(String(16))          # create | update | delete
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)
