"""Content safety: a lexicon matched on input and, while streaming, on output.

Matching is case- and width-insensitive. Both the lexicon and the text are
normalised one code point at a time::

    norm(c) = NFKC(casefold(NFKC(c)))      minus a few invisible format chars

so full-width Latin ("ＢＡＤ") matches "bad", "É" matches "é", "ﬁ" matches
"fi", half-width katakana matches full-width, and Chinese terms match as they
are. Normalising per code point
(rather than the whole string) keeps an exact map from every normalised
position back to the original code point that produced it, which is what lets
the stream guard cut *before* a term even when normalisation changes lengths
("ﬁ" -> "fi", "ß" -> "ss").

Zero-width space/joiners, the word joiner, BOM and soft hyphen normalise to
nothing, so "b\u200bad" still matches "bad".

Known limit: composition across code points is not done, so a decomposed
"e\u0301" does not match a composed "é" in the lexicon (and vice versa). We
chose this over per-code-point NFKD, which would make Hangul and kana with
voicing marks match terms they do not contain ("하나" would contain "한").

Usage::

    policy = SafetyPolicy.from_file("lexicon.txt")     # or SafetyPolicy(["bad", "敏感词"])
    policy.check_input(prompt)                         # raises ContentBlocked(reason="input")
    guard = policy.stream_guard()
    for chunk in chunks:
        emit(guard.feed(chunk))
        if guard.blocked: ...                          # guard.term says which
    emit(guard.flush())

Nothing here knows about HTTP or models.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import ahocorasick_rs

from wharf.errors import ContentBlocked

__all__ = ["Lexicon", "StreamGuard", "SafetyPolicy", "normalize", "load_terms"]

# Invisible format characters that are used to split a word without changing
# how it looks. They normalise to "" so they cannot hide a term.
_IGNORED = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")


@lru_cache(maxsize=65536)
def _norm_char(c: str) -> str:
    if c in _IGNORED:
        return ""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", c).casefold())


def normalize(text: str) -> str:
    """The normalised form used for matching (per code point, see module doc)."""
    return "".join(_norm_char(c) for c in text)


def _normalize_with_map(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each normalised position, the index of the
    original code point that produced it (plus a final entry = len(text))."""
    parts: list[str] = []
    owner: list[int] = []
    for i, c in enumerate(text):
        n = _norm_char(c)
        if n:
            parts.append(n)
            owner.extend([i] * len(n))
    owner.append(len(text))
    return "".join(parts), owner


def load_terms(path: str | os.PathLike[str]) -> list[str]:
    """Read a lexicon file: UTF-8 (BOM allowed), one term per line, blank
    lines and lines starting with '#' ignored, surrounding whitespace stripped."""
    with open(path, encoding="utf-8-sig") as f:
        return parse_terms(f.read())


def parse_terms(text: str) -> list[str]:
    """Same rules as load_terms, from a string."""
    out = []
    for line in text.splitlines():
        t = line.strip()
        if t and not t.startswith("#"):
            out.append(t)
    return out


class Lexicon:
    """An immutable set of terms compiled into an Aho-Corasick automaton."""

    def __init__(self, terms: Iterable[str] = ()):
        originals: dict[str, str] = {}          # normalised -> first original spelling
        for t in terms:
            if not isinstance(t, str):
                raise TypeError(f"lexicon terms must be str, got {type(t).__name__}")
            t = t.strip()
            n = normalize(t)
            if n and n not in originals:
                originals[n] = t
        self._norm_terms = list(originals)
        self._originals = [originals[n] for n in self._norm_terms]
        self._ac = (
            ahocorasick_rs.AhoCorasick(self._norm_terms, matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_LONGEST)
            if self._norm_terms else None
        )
        # Every proper prefix of every normalised term: what the stream guard holds back.
        self._prefixes = frozenset(n[:k] for n in self._norm_terms for k in range(1, len(n)))
        self._max_len = max((len(n) for n in self._norm_terms), default=0)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Lexicon":
        return cls(load_terms(path))

    @property
    def terms(self) -> list[str]:
        """The terms as given (deduplicated by normalised form)."""
        return list(self._originals)

    def __len__(self) -> int:
        return len(self._norm_terms)

    def __bool__(self) -> bool:  # an empty lexicon is still a lexicon
        return True

    def _first_match(self, norm: str) -> tuple[int, int, int] | None:
        """(term index, start, end) of the leftmost match in normalised text."""
        if self._ac is None or not norm:
            return None
        m = self._ac.find_matches_as_indexes(norm)
        return m[0] if m else None

    def find(self, text: str) -> str | None:
        """The first (leftmost) term found in text, as spelled in the lexicon, or None."""
        m = self._first_match(normalize(text))
        return None if m is None else self._originals[m[0]]

    def check_input(self, text: str) -> None:
        """Raise ContentBlocked(reason="input") when text contains a term."""
        if self.find(text) is not None:
            raise ContentBlocked("The input contains blocked content.", reason="input")

    def stream_guard(self) -> "StreamGuard":
        return StreamGuard(self)


class StreamGuard:
    """Filters a stream of text chunks against one Lexicon.

    `feed(chunk)` returns the text that is safe to emit now. It holds back the
    longest tail that could still be the start of a term, so a term split over
    any number of chunks is caught before any of it is emitted. When a term is
    found, `feed` returns the safe text before it, sets `blocked = True` and
    `term`, and every later `feed`/`flush` returns "". `flush()` at the end of
    the stream returns the held-back tail (which holds no complete term).

    Not thread-safe: one guard per stream.
    """

    def __init__(self, lexicon: Lexicon):
        self.lexicon = lexicon
        self.blocked = False
        self.term: str | None = None
        self._pending = ""          # original text received but not yet emitted

    @property
    def held(self) -> str:
        """Text currently held back (for diagnostics)."""
        return self._pending

    def feed(self, chunk: str) -> str:
        if self.blocked:
            return ""
        if not chunk:
            return ""
        lex = self.lexicon
        if lex._ac is None:
            return chunk
        pending = self._pending + chunk
        norm, owner = _normalize_with_map(pending)
        m = lex._first_match(norm)
        if m is not None:
            # Cut before the code point that produced the term's first normalised
            # char, or earlier if a longer term could still be starting before it
            # (terms "bc" and "abcd", text "abc...": emit nothing of "abc").
            start = m[1]
            for p in range(max(0, start - lex._max_len + 1), start):
                if norm[p:] in lex._prefixes:
                    start = p
                    break
            cut = owner[start]
            self.blocked = True
            self.term = lex._originals[m[0]]
            self._pending = ""
            return pending[:cut]
        # Hold back from the earliest normalised position whose suffix is a
        # proper prefix of some term; only the last max_len-1 positions can be.
        hold = len(pending)
        prefixes = lex._prefixes
        for p in range(max(0, len(norm) - lex._max_len + 1), len(norm)):
            if norm[p:] in prefixes:
                hold = owner[p]
                break
        self._pending = pending[hold:]
        return pending[:hold]

    def flush(self) -> str:
        """End of stream: release whatever is held back (never part of a term)."""
        if self.blocked:
            return ""
        out, self._pending = self._pending, ""
        return out


class SafetyPolicy:
    """A reloadable holder of the current Lexicon.

    `replace(terms)` builds a new Lexicon and swaps it in atomically; requests
    already streaming keep the lexicon their guard was created with.
    """

    def __init__(self, terms: Iterable[str] = ()):
        self._lexicon = Lexicon(terms)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None) -> "SafetyPolicy":
        """A policy from a lexicon file; None or a missing path gives an empty one."""
        if path is None or not os.path.exists(path):
            return cls()
        return cls(load_terms(path))

    @property
    def lexicon(self) -> Lexicon:
        return self._lexicon

    @property
    def terms(self) -> list[str]:
        return self._lexicon.terms

    def replace(self, terms: Iterable[str]) -> Lexicon:
        """Swap in a new lexicon (built outside the lock; the swap is one assignment)."""
        lex = Lexicon(terms)
        with self._lock:
            self._lexicon = lex
        return lex

    def reload(self, path: str | os.PathLike[str]) -> Lexicon:
        return self.replace(load_terms(path))

    def find(self, text: str) -> str | None:
        return self._lexicon.find(text)

    def check_input(self, text: str) -> None:
        self._lexicon.check_input(text)

    def stream_guard(self) -> StreamGuard:
        return self._lexicon.stream_guard()
