"""Replacing the safety lexicon: what a term may be, and the lexicon file beside the store.

One rule for every way in (PUT /admin/api/safety/lexicon, `wharf safety lexicon --set` on
the local store): terms are stripped, blank ones dropped, and a term with a line break,
a leading '#' (the file would read it as a comment), a lone UTF-16 surrogate, more than
MAX_TERM_CHARS characters, or more than MAX_TERMS terms in all is refused (InvalidParam).
The store holds the lexicon (lexicon_store.py); the file only seeds a fresh install's store,
so a file that cannot be written is logged, never a failed replacement.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from wharf.errors import InvalidParam
from wharf.platform import validate
from wharf.platform.lexicon_store import LexiconStore, StoredLexicon
from wharf.platform.safety import load_terms

log = logging.getLogger("wharf.safety")
MAX_TERMS = 100_000
MAX_TERM_CHARS = 256


class Replaces(Protocol):
    """LexiconStore (the store alone) or LexiconSync (the store and this process's policy)."""

    def replace(self, terms: Iterable[str]) -> StoredLexicon: ...


def checked_terms(terms: Iterable[str]) -> list[str]:
    """The terms as they are stored: stripped, blanks dropped; InvalidParam for a bad one."""
    terms = list(terms)
    if len(terms) > MAX_TERMS:
        raise InvalidParam(f"a lexicon holds at most {MAX_TERMS} terms", param="terms")
    if any(not isinstance(t, str) for t in terms):
        raise InvalidParam("every term must be text", param="terms")
    if any(len(t) > MAX_TERM_CHARS for t in terms):
        raise InvalidParam(f"a term holds at most {MAX_TERM_CHARS} characters", param="terms")
    terms = [t.strip() for t in terms if t.strip()]
    if any("\n" in t or "\r" in t or t.startswith("#") for t in terms):
        raise InvalidParam("a term cannot contain a line break or start with '#'", param="terms")
    if any(validate.has_lone_surrogate(t) for t in terms):
        raise InvalidParam("a term holds a lone UTF-16 surrogate (not valid Unicode text)", param="terms")
    return terms


def replace_lexicon(target: Replaces, terms: Iterable[str], path: Path | None) -> StoredLexicon:
    """Check `terms`, store them as the whole lexicon (a new version) and write the file at
    `path` (None: no file)."""
    terms = checked_terms(terms)
    stored = target.replace(terms)
    if path is not None:
        try:
            write_lexicon_file(Path(path), terms)
        except OSError as e:      # the store has it (and wins at every start)
            log.warning("lexicon stored, but the file %s could not be written: %s", path, e)
    return stored


def write_lexicon_file(path: Path, terms: list[str]) -> None:
    """Atomically: a crash never leaves half a lexicon."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lexicon-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# Wharf lexicon: one term per line (written by the admin API)\n")
            f.writelines(t + "\n" for t in terms)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stored_or_file(book: LexiconStore, path: Path) -> tuple[list[str], int | None]:
    """(terms, version) of the lexicon servers on this store enforce: the stored one, or
    the file's (version None) while the store has none."""
    stored = book.read()
    if stored is not None:
        return stored.terms, stored.version
    return (load_terms(path) if path.exists() else []), None
