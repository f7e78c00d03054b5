"""Web console sign-in sessions in the shared store, so every gateway replica knows them.

A session id is the cookie value: 256 random bits, minted on every sign-in. Only its
SHA-256 is stored (like API keys: that much entropy needs no salt or KDF), so a copy of
the database holds no usable cookie. The user's API key is stored Fernet-encrypted with
the server's SecretBox (the one credential secrets use); every replica shares
WHARF_SECRET_KEY and can decrypt it.

Sessions expire after SESSION_TTL_S without use. `last_seen` is written only when it is
older than TOUCH_INTERVAL_S, so a busy console costs one indexed read per request, not a
write; idle expiry is therefore exact to within that interval. Expired rows are refused
by get() and deleted by the next create().
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from wharf.errors import AuthError, Internal
from wharf.platform.models import ConsoleSession as Row
from wharf.platform.models import utcnow
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

SESSION_TTL_S = 12 * 3600
TOUCH_INTERVAL_S = 60.0
# Our ids are 43 characters; anything far longer is not one of ours (and is not hashed).
MAX_SID_LEN = 128

log = logging.getLogger("wharf.platform")

_T = Row.__table__
_FIND = (select(_T.c.sid_hash, _T.c.account_id, _T.c.key_encrypted, _T.c.csrf, _T.c.last_seen)
         .where(_T.c.sid_hash.in_(bindparam("hashes", expanding=True))))
_TOUCH = update(_T).where(_T.c.sid_hash == bindparam("h")).values(last_seen=bindparam("now"))


def hash_sid(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    key: str = field(repr=False)        # the user's API key, decrypted
    csrf: str = field(repr=False)
    account_id: int
    last_seen: dt.datetime


class ConsoleSessions:
    def __init__(self, store: Store, box: SecretBox, *, ttl_s: float = SESSION_TTL_S,
                 touch_interval_s: float = TOUCH_INTERVAL_S):
        self.store = store
        self.box = box
        self.ttl = dt.timedelta(seconds=ttl_s)
        self.touch_interval = dt.timedelta(seconds=touch_interval_s)

    def create(self, key: str, account_id: int, old_sids: list[str], *,
               now: dt.datetime | None = None) -> tuple[str, Session]:
        """A new session for this (already verified) key. `old_sids` (the cookies the
        browser sent) are destroyed in the same transaction, as are expired sessions."""
        now = now or utcnow()
        sid = secrets.token_urlsafe(32)
        sess = Session(key=key, csrf=secrets.token_urlsafe(32), account_id=account_id, last_seen=now)
        old = list(_by_hash(old_sids))
        try:
            with self.store.write_conn() as conn:
                if old:
                    conn.execute(delete(_T).where(_T.c.sid_hash.in_(old)))
                conn.execute(delete(_T).where(_T.c.last_seen < now - self.ttl))
                conn.execute(insert(_T), {"sid_hash": hash_sid(sid), "account_id": account_id,
                                          "key_encrypted": self.box.encrypt(key), "csrf": sess.csrf,
                                          "created_at": now, "last_seen": now})
        except IntegrityError:
            # The account was deleted between the key check and this insert (foreign key).
            raise AuthError("the account no longer exists", reason="invalid") from None
        return sid, sess

    def get(self, sid: str | None, *, now: dt.datetime | None = None) -> Session | None:
        found = self.find([sid] if sid else [], now=now)
        return None if found is None else found[1]

    def find(self, sids: list[str], *, now: dt.datetime | None = None) -> tuple[str, Session] | None:
        """The first of `sids` that is a live session, as (sid, session), in one query.
        Unknown, expired, malformed or oversized ids are simply not found."""
        by_hash = _by_hash(sids)
        if not by_hash:
            return None
        now = now or utcnow()
        with self.store.read_conn() as conn:
            rows = {r.sid_hash: r for r in conn.execute(_FIND, {"hashes": list(by_hash)})}
        for h, sid in by_hash.items():                  # in the order the caller gave them
            row = rows.get(h)
            if row is None or now - row.last_seen > self.ttl:
                continue
            try:
                key = self.box.decrypt(row.key_encrypted)
            except Internal:                               # written under another WHARF_SECRET_KEY
                log.warning("a console session cannot be decrypted (WHARF_SECRET_KEY differs between "
                            "replicas?); treating it as signed out")
                continue
            last_seen = row.last_seen
            if now - last_seen > self.touch_interval:
                with self.store.write_conn() as conn:
                    conn.execute(_TOUCH, {"h": h, "now": now})
                last_seen = now
            return sid, Session(key=key, csrf=row.csrf, account_id=row.account_id, last_seen=last_seen)
        return None

    def drop(self, sid: str | None) -> None:
        hashes = list(_by_hash([sid] if sid else []))
        if hashes:
            with self.store.write_conn() as conn:
                conn.execute(delete(_T).where(_T.c.sid_hash.in_(hashes)))


def _by_hash(sids: list[str]) -> dict[str, str]:
    """hash -> id for the ids that could be ours, in the order given, duplicates once."""
    out: dict[str, str] = {}
    for sid in sids:
        if isinstance(sid, str) and 0 < len(sid) <= MAX_SID_LEN:
            out.setdefault(hash_sid(sid), sid)
    return out
