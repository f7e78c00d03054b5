"""Content safety: a lexicon matched on input and, while streaming, on output.

Matching follows Unicode's compatibility caseless matching (UAX #15, D146;
the fold behind NFKC_Casefold and UTS #39's skeletons), applied to the
lexicon and the text alike, one code point at a time::

    norm(c) = NFKD(casefold(NFKD(casefold(NFD(c)))))   minus default-ignorables

then canonical reordering of combining marks across code points, so the
result is the text's NFKD-casefold form. Full-width Latin ("ＢＡＤ")
matches "bad", "ﬁ" matches "fi", "ß" matches "ss", half-width katakana
matches full-width, and a precomposed "é" matches a decomposed "e\u0301"
(both are "e\u0301" here). Normalising per code point keeps an exact map
from every normalised position back to the original code point that produced
it, which is what lets the stream guard cut *before* a term even when
normalisation changes lengths.

Ignored (normalise to nothing), so they cannot hide a term: every code point
of general category Cf (zero-width space/joiners, bidi marks and isolates,
invisible operators, the Mongolian vowel separator, soft hyphen, BOM, tags
E0000-E007F, ...) as Python's unicodedata knows it, the rest of Unicode's
Default_Ignorable_Code_Point set (Other_Default_Ignorable_Code_Point and
Variation_Selector from PropList.txt: CGJ U+034F, Hangul fillers U+115F,
U+1160, U+3164, U+FFA0, Mongolian FVS U+180B-180F, VS1-256 FE00-FE0F and
E0100-E01EF, the reserved E0000-E0FFF), and C0/C1 controls other than
whitespace (they print nothing either).

Decomposed matching would let a term match the first part of a character
("하" inside "한", which decomposes to 하 + a final consonant; "か" in
"が"); so a match followed by a character that attaches to its last one (a
combining mark, or one that NFC composes with it: Hangul final jamo, Indic
two-part vowels) is not a match. The stream guard blocks a term that ends
exactly at the end of what it has seen without waiting to learn whether a
mark follows (it errs towards blocking).

Known limits: combining marks that a stream delivers out of canonical order
across two chunks ("ê", then a dot below in the next chunk, against a term
spelled "ệ") are not reordered across the chunk boundary once the first part
was released; code points unassigned in Python's Unicode database (14.0 on
Python 3.11) are not known to be Cf.

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

__all__ = ["Lexicon", "StreamGuard", "SafetyPolicy", "normalize", "load_terms", "is_ignorable"]

# Default_Ignorable_Code_Point = Cf + Variation_Selector + Other_Default_Ignorable_Code_Point
# (minus a few Cf that we ignore anyway). unicodedata has the category but not these two
# properties, so their ranges (PropList.txt, unchanged since Unicode 14) are listed here.
_DEFAULT_IGNORABLE_RANGES = (
    (0x034F, 0x034F),     # COMBINING GRAPHEME JOINER
    (0x115F, 0x1160),     # HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),     # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),     # MONGOLIAN FREE VARIATION SELECTORS (U+180E, the vowel separator, is Cf)
    (0x2065, 0x2065),     # reserved, among the invisible operators
    (0x3164, 0x3164),     # HANGUL FILLER
    (0xFE00, 0xFE0F),     # VARIATION SELECTOR-1..16
    (0xFFA0, 0xFFA0),     # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),     # reserved
    (0xE0000, 0xE0FFF),   # tags (E0000-E007F), VARIATION SELECTOR-17..256 (E0100-E01EF), reserved
)


def is_ignorable(c: str) -> bool:
    """True for a code point the matcher ignores: general category Cf, the rest of
    Default_Ignorable_Code_Point, and controls (Cc) other than whitespace."""
    cat = unicodedata.category(c)
    if cat == "Cf":
        return True
    if cat == "Cc":
        return not c.isspace()
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _DEFAULT_IGNORABLE_RANGES)


@lru_cache(maxsize=65536)
def _norm_char(c: str) -> str:
    if is_ignorable(c):
        return ""
    nf = unicodedata.normalize
    n = nf("NFKD", nf("NFKD", nf("NFD", c).casefold()).casefold())
    if n != c and any(is_ignorable(x) for x in n):
        n = "".join(x for x in n if not is_ignorable(x))
    return n


def _reorder(norm: str, owner: list[int]) -> tuple[str, list[int]]:
    """Canonical ordering of combining marks across code points (each code point's own
    marks are already in order). A run of marks and the starter before it become one
    unit: every position in it maps to the starter's code point, so a cut never
    separates a character from its marks."""
    chars = list(norm)
    i, n = 0, len(chars)
    while i < n:
        if not unicodedata.combining(chars[i]):
            i += 1
            continue
        j = i
        while j < n and unicodedata.combining(chars[j]):
            j += 1
        chars[i:j] = sorted(chars[i:j], key=unicodedata.combining)   # stable, as the algorithm says
        base = i - 1 if i > 0 else i
        for k in range(base + 1, j):
            owner[k] = owner[base]
        i = j
    return "".join(chars), owner


def _normalize_with_map(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each normalised position, the index of the
    original code point that produced it (plus a final entry = len(text))."""
    parts: list[str] = []
    owner: list[int] = []
    for i, c in enumerate(text):
        n = _norm_char(c)
        if n:
            parts.append(n)
            if len(n) == 1:
                owner.append(i)
            else:
                owner.extend([i] * len(n))
    owner.append(len(text))
    norm = "".join(parts)
    if not norm.isascii() and not unicodedata.is_normalized("NFD", norm):
        norm, owner = _reorder(norm, owner)
    return norm, owner


def normalize(text: str) -> str:
    """The normalised form used for matching (see module doc)."""
    norm = "".join(map(_norm_char, text))
    if not norm.isascii() and not unicodedata.is_normalized("NFD", norm):
        norm = unicodedata.normalize("NFD", norm)     # only reorders marks: all is decomposed
    return norm


def _attaches(norm: str, e: int) -> bool:
    """Whether norm[e] belongs to the character that ends at norm[e-1]: a combining mark,
    or a starter that NFC composes with what precedes it (Hangul final jamo, ...)."""
    c = norm[e]
    if unicodedata.combining(c):
        return True
    if c.isascii():
        return False
    k = max(0, e - 2)
    nf = unicodedata.normalize
    return len(nf("NFC", norm[k:e + 1])) <= len(nf("NFC", norm[k:e]))


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
        self._ac_all = None         # every-match automaton, built on first need
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
        """(term index, start, end) of the leftmost match in normalised text: leftmost
        start, then longest, skipping a match whose last character is continued by the
        next one (see _attaches)."""
        if self._ac is None or not norm:
            return None
        m = self._ac.find_matches_as_indexes(norm)
        if not m:
            return None
        n = len(norm)
        first = m[0]
        if first[2] == n or not _attaches(norm, first[2]):
            return first
        # Rare: that match is the first part of a character. A real one may start inside it
        # (shorter, or later); past its end the leftmost-longest list goes on as it is.
        if self._ac_all is None:
            self._ac_all = ahocorasick_rs.AhoCorasick(self._norm_terms, matchkind=ahocorasick_rs.MATCHKIND_STANDARD)
        for idx, s, e in m:
            if e == n or not _attaches(norm, e):
                return idx, s, e
            window = norm[s:e + self._max_len]
            best = None
            for i, ws, we in self._ac_all.find_matches_as_indexes(window, overlapping=True):
                if ws < e - s and (best is None or (ws, ws - we) < (best[1], best[1] - best[2])) \
                        and (s + we == n or not _attaches(norm, s + we)):
                    best = (i, ws, we)
            if best is not None:
                return best[0], s + best[1], s + best[2]
        return None

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
