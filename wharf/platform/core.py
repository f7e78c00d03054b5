"""Platform: the one object the HTTP app and the CLI hold (store + every platform service)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from wharf.platform.accounts import Accounts, ensure_admin
from wharf.platform.audit import AuditLog
from wharf.platform.auth import Authenticator
from wharf.platform.console_sessions import ConsoleSessions
from wharf.platform.credentials import Credentials
from wharf.platform.key_scope import KeyScopes
from wharf.platform.lexicon_store import LexiconStore
from wharf.platform.private_files import private_dir
from wharf.platform.quota import DEFAULT_TZ, QuotaBook
from wharf.platform.request_content import RequestContents
from wharf.platform.request_log import RequestLog
from wharf.platform.secretbox import SecretBox
from wharf.platform.service_stats import ServiceStats
from wharf.platform.services import Services
from wharf.platform.store import Store
from wharf.platform.tenancy import DEFAULT_MAX_CREDENTIALS_PER_ACCOUNT, DEFAULT_MAX_SERVICES_PER_ACCOUNT
from wharf.platform.usage import UsageLog

log = logging.getLogger("wharf.platform")


class Platform:
    def __init__(self, store: Store, secret_box: SecretBox, *, tz: str = DEFAULT_TZ,
                 model_exists: Callable[[str], bool] | None = None,
                 default_quota: tuple[int | None, int | None] = (None, None),
                 max_credentials_per_account: int | None = DEFAULT_MAX_CREDENTIALS_PER_ACCOUNT,
                 max_services_per_account: int | None = DEFAULT_MAX_SERVICES_PER_ACCOUNT,
                 max_token_lifetime_s: int | None = None):
        self.store = store
        self.secret_box = secret_box
        self.accounts = Accounts(store)
        self.credentials = Credentials(store, secret_box, max_per_account=max_credentials_per_account)
        self.services = Services(store, model_exists, max_per_account=max_services_per_account)
        auth_kw = {} if max_token_lifetime_s is None else {"max_token_lifetime_s": max_token_lifetime_s}
        self.authenticator = Authenticator(store, secret_box, credentials=self.credentials, **auth_kw)
        self.quota = QuotaBook(store, tz, default_chars=default_quota[0], default_tokens=default_quota[1])
        self.usage = UsageLog(store, tz)
        self.request_log = RequestLog(store)     # the same rows as usage, by request
        self.service_stats = ServiceStats(store)  # the same rows again, per service and day
        self.request_contents = RequestContents(store)   # prompts / outputs, only where opted in
        self.key_scopes = KeyScopes(store, self.credentials)
        self.lexicon = LexiconStore(store)
        self.audit = AuditLog(store)             # written by the changes themselves (audit.py)
        self.console_sessions = ConsoleSessions(store, secret_box)

    @classmethod
    def open(cls, settings, *, model_exists: Callable[[str], bool] | None = None) -> "Platform":
        """From wharf.config.Settings: database (resolved_database_url), secret key
        (WHARF_SECRET_KEY or data_dir/secret.key), quota timezone (settings.quota_timezone
        if it exists, else env WHARF_QUOTA_TIMEZONE, else Asia/Shanghai), platform default quotas
        (settings.default_quota_chars_per_day / default_quota_tokens_per_day), caps on
        credentials and services per account (settings.max_credentials_per_account /
        max_services_per_account) and the longest-lived self-signed credential accepted
        (settings.max_token_lifetime_s: SenseNova JWTs, BCE signatures)."""
        data_dir = private_dir(settings.data_dir)
        tz = (getattr(settings, "quota_timezone", None) or os.environ.get("WHARF_QUOTA_TIMEZONE")
              or DEFAULT_TZ)
        store = Store.open(settings.resolved_database_url)
        default_quota = (getattr(settings, "default_quota_chars_per_day", None),
                         getattr(settings, "default_quota_tokens_per_day", None))
        return cls(store, SecretBox.load(data_dir), tz=tz, model_exists=model_exists,
                   default_quota=default_quota,
                   max_credentials_per_account=getattr(settings, "max_credentials_per_account",
                                                       DEFAULT_MAX_CREDENTIALS_PER_ACCOUNT),
                   max_services_per_account=getattr(settings, "max_services_per_account",
                                                    DEFAULT_MAX_SERVICES_PER_ACCOUNT),
                   max_token_lifetime_s=getattr(settings, "max_token_lifetime_s", None))

    def settle_and_record(self, request_id: str, *, chars: int, tokens: int, reserved: bool,
                          content: tuple[int, str, list[str]] | None = None, **record) -> None:
        """The end of a request in one write transaction: settle its quota reservation
        (when it holds one), write its usage record and, for an account that opted in,
        its content (`content`: retention days, prompt, outputs). If that transaction
        fails, each is tried on its own, so one failing never costs the other."""
        def keep_content(conn) -> None:
            days, prompt, outputs = content
            self.request_contents.write(conn, request_id=request_id, account_id=record["account_id"],
                                        days=days, prompt=prompt, outputs=outputs)
        try:
            with self.store.write_conn() as conn:
                if reserved:
                    self.quota.settle(request_id, chars, tokens, conn=conn)
                self.usage.record_usage(request_id=request_id, conn=conn, **record)
                if content is not None:
                    keep_content(conn)
            return
        except Exception:
            log.exception("settle + usage transaction failed for %s; trying each alone", request_id)
        if reserved:
            try:
                self.quota.settle(request_id, chars, tokens)
            except Exception:
                log.exception("quota settle failed for %s", request_id)
        try:
            self.usage.record_usage(request_id=request_id, **record)
        except Exception:
            log.exception("usage record failed for %s", request_id)
        if content is not None:
            try:
                with self.store.write_conn() as conn:
                    keep_content(conn)
            except Exception:
                log.exception("content record failed for %s", request_id)

    def reconcile(self, *, older_than_s: float, mode: str = "stale", process_start=None) -> int:
        """Release quota reservations left by a process that died mid-request, writing an
        "error:interrupted" usage record for each request that has none (see
        QuotaBook.reconcile_stale). mode "all": every reservation made before
        `process_start` (a single process per database, at start-up); "stale": those older
        than `older_than_s` (safe beside live replicas: no request outlives its deadline);
        "auto": "all" on SQLite, else "stale"; "off": nothing. Returns how many."""
        import datetime as dt

        if mode == "auto":
            mode = "all" if self.store.dialect == "sqlite" else "stale"
        if mode == "off":
            return 0
        if mode == "all" and process_start is not None:
            return self.quota.reconcile_stale(created_before=process_start, usage=self.usage)
        return self.quota.reconcile_stale(older_than=dt.timedelta(seconds=older_than_s), usage=self.usage)

    def ensure_admin(self) -> str | None:
        return ensure_admin(self.store)

    def close(self) -> None:
        self.store.close()
