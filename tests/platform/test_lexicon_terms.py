"""The lexicon replacement rule (wharf/platform/lexicon_terms.py), called directly: the one
the admin API's PUT /safety/lexicon and the local `wharf safety lexicon --set` share."""

from __future__ import annotations

import pytest

from wharf.errors import InvalidParam
from wharf.platform.lexicon_store import LexiconStore, LexiconSync
from wharf.platform.lexicon_terms import (
    MAX_TERM_CHARS,
    MAX_TERMS,
    checked_terms,
    replace_lexicon,
    stored_or_file,
    write_lexicon_file,
)
from wharf.platform.safety import SafetyPolicy, load_terms


def test_terms_are_stripped_and_blanks_dropped():
    assert checked_terms(["  bad ", "", "   ", "敏感词"]) == ["bad", "敏感词"]


@pytest.mark.parametrize("terms, says", [
    (["one\ntwo"], "line break"), (["a\rb"], "line break"), (["#comment"], "start with '#'"),
    (["  #after-strip"], "start with '#'"), (["bad\ud800"], "surrogate"),
    (["x" * (MAX_TERM_CHARS + 1)], f"at most {MAX_TERM_CHARS} characters"),
    (["t"] * (MAX_TERMS + 1), f"at most {MAX_TERMS} terms"), ([3], "text"),
])
def test_a_bad_term_is_refused(terms, says):
    with pytest.raises(InvalidParam) as e:
        checked_terms(terms)
    assert says in e.value.message and e.value.param == "terms"


def test_the_longest_term_and_the_most_terms_pass():
    assert checked_terms(["x" * MAX_TERM_CHARS]) == ["x" * MAX_TERM_CHARS]
    assert len(checked_terms(["t"] * MAX_TERMS)) == MAX_TERMS


def test_replace_stores_the_checked_terms_and_writes_the_file(sqlite_platform, tmp_path):
    path = tmp_path / "sub" / "lexicon.txt"
    stored = replace_lexicon(sqlite_platform.lexicon, [" bad ", "", "敏感词"], path)
    assert (stored.version, stored.terms) == (1, ["bad", "敏感词"])
    assert sqlite_platform.lexicon.read().terms == ["bad", "敏感词"]
    assert load_terms(path) == ["bad", "敏感词"]          # the header line is a comment


def test_a_refused_lexicon_changes_nothing(sqlite_platform, tmp_path):
    path = tmp_path / "lexicon.txt"
    replace_lexicon(sqlite_platform.lexicon, ["old"], path)
    with pytest.raises(InvalidParam):
        replace_lexicon(sqlite_platform.lexicon, ["new", "#no"], path)
    assert sqlite_platform.lexicon.read().terms == ["old"] and load_terms(path) == ["old"]


def test_through_a_sync_the_policy_enforces_it_at_once(sqlite_platform):
    policy = SafetyPolicy()
    sync = LexiconSync(LexiconStore(sqlite_platform.store), policy)
    replace_lexicon(sync, ["bad"], None)                  # no file: only the store
    assert policy.terms == ["bad"] and sync.version == 1


def test_a_file_that_cannot_be_written_is_logged_not_raised(sqlite_platform, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    stored = replace_lexicon(sqlite_platform.lexicon, ["bad"], blocker / "lexicon.txt")
    assert stored.terms == ["bad"] and "could not be written" in caplog.text


def test_stored_or_file(sqlite_platform, tmp_path):
    path = tmp_path / "lexicon.txt"
    assert stored_or_file(sqlite_platform.lexicon, path) == ([], None)
    write_lexicon_file(path, ["from-file"])
    assert stored_or_file(sqlite_platform.lexicon, path) == (["from-file"], None)
    sqlite_platform.lexicon.replace(["stored"])
    assert stored_or_file(sqlite_platform.lexicon, path) == (["stored"], 1)   # the store wins
