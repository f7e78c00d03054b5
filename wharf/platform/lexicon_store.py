"""The safety lexicon in the shared store, and keeping one process's SafetyPolicy on it.

The store is the source of truth (table safety_lexicon: one row, the terms as JSON and a
version bumped by every replacement). Each replica holds the lexicon it enforces in a
SafetyPolicy; LexiconSync.refresh() reads only the version (one primary-key SELECT) and
reloads the terms when it moved. The HTTP app calls refresh() every
WHARF_LEXICON_REFRESH_S from a background task, never on the request path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select, update

from wharf.platform import audit
from wharf.platform.models import SafetyLexicon, utcnow
from wharf.platform.safety import SafetyPolicy
from wharf.platform.store import Store

log = logging.getLogger("wharf.safety")
ROW_ID = 1

_T = SafetyLexicon.__table__
_VERSION = select(_T.c.version).where(_T.c.id == ROW_ID)
_READ = select(_T.c.version, _T.c.terms_json).where(_T.c.id == ROW_ID)


@dataclass(frozen=True)
class StoredLexicon:
    version: int
    terms: list[str]


def _row(r) -> StoredLexicon:
    return StoredLexicon(int(r.version), list(json.loads(r.terms_json)))


class LexiconStore:
    def __init__(self, store: Store):
        self.store = store
        # Create the row if missing, version 0; the same transaction then bumps it to 1 or more.
        self._ensure_row = (store.insert(SafetyLexicon)
                            .values(id=ROW_ID, version=0, terms_json="[]", updated_at=utcnow())
                            .on_conflict_do_nothing(index_elements=["id"]))

    def version(self) -> int | None:
        """The stored version (None: no lexicon stored yet). One primary-key read."""
        with self.store.read_conn() as conn:
            return conn.execute(_VERSION).scalar()

    def read(self) -> StoredLexicon | None:
        with self.store.read_conn() as conn:
            r = conn.execute(_READ).first()
        return None if r is None else _row(r)

    def replace(self, terms: Iterable[str]) -> StoredLexicon:
        """Store `terms` as the whole lexicon, with the next version."""
        terms = list(terms)
        with self.store.write_conn() as conn:
            before = conn.execute(_READ).first()
            conn.execute(self._ensure_row.values(updated_at=utcnow()))
            version = conn.execute(update(_T).where(_T.c.id == ROW_ID)
                                   .values(version=_T.c.version + 1, terms_json=_dump(terms),
                                           updated_at=utcnow())
                                   .returning(_T.c.version)).scalar_one()
            old = None if before is None else _row(before)
            was, now = audit.lexicon_change(old and old.terms, old and old.version, terms, int(version))
            audit.record(conn, object_type="lexicon", object_id=None, account_id=None, action="update",
                         before=was, after=now)
        return StoredLexicon(int(version), terms)

    def seed(self, terms: Iterable[str]) -> StoredLexicon:
        """Store `terms` as version 1 unless a lexicon is already stored (then that one
        wins, also when another replica seeds at the same moment); returns what is stored."""
        terms = list(terms)
        with self.store.write_conn() as conn:
            conn.execute(self._ensure_row.values(version=1, terms_json=_dump(terms), updated_at=utcnow()))
            return _row(conn.execute(_READ).one())


def _dump(terms: list[str]) -> str:
    return json.dumps(terms, ensure_ascii=False)


class LexiconSync:
    """Keeps one SafetyPolicy at the stored lexicon's version.

    A lock serialises "read (or write) the store, then swap" within the process, so the
    poller can never put back the lexicon a concurrent PUT just replaced. Any version
    other than the one held is taken (not only a higher one): a database restored from a
    backup is followed too."""

    def __init__(self, book: LexiconStore, policy: SafetyPolicy):
        self.book = book
        self.policy = policy
        self.version: int | None = None          # the stored version `policy` holds
        self._lock = threading.Lock()

    def start(self, seed_terms: Callable[[], list[str]]) -> None:
        """At start-up: the stored lexicon if there is one; otherwise store and use
        `seed_terms()` (the lexicon file of an install that predates the shared store)."""
        with self._lock:
            stored = self.book.read()
            terms = seed_terms()
            if stored is None:
                if not terms:                    # nothing to share yet: store nothing
                    return
                stored = self.book.seed(terms)
            elif terms and set(terms) != set(stored.terms):
                # A hand-edited file no longer applies by itself: say so, once, at start.
                log.warning("the lexicon file differs from the shared store's (version %s, %d terms); "
                            "the store wins. Apply the file with: wharf safety lexicon --set FILE",
                            stored.version, len(stored.terms))
            self._apply(stored)

    def refresh(self) -> bool:
        """Reload if the stored version moved; one primary-key SELECT when it did not.
        True if a new lexicon was swapped in."""
        with self._lock:
            version = self.book.version()
            if version is None or version == self.version:
                return False
            stored = self.book.read()
            if stored is None:
                return False
            self._apply(stored)
            return True

    def replace(self, terms: Iterable[str]) -> StoredLexicon:
        """Store a new lexicon and enforce it here at once; other replicas follow on
        their next refresh()."""
        with self._lock:
            stored = self.book.replace(terms)
            self._apply(stored)
            return stored

    def _apply(self, stored: StoredLexicon) -> None:
        self.policy.replace(stored.terms)
        self.version = stored.version
