"""The safety lexicon in the shared store (real SQLite and PostgreSQL): versions, seeding
from the file of an older install, and two "replicas" (two SafetyPolicy + LexiconSync on
one store) following each other's changes."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from wharf.errors import ContentBlocked
from wharf.platform.lexicon_store import LexiconStore, LexiconSync
from wharf.platform.safety import SafetyPolicy
from wharf.platform.store import Store


def replica(store) -> tuple[LexiconSync, SafetyPolicy]:
    policy = SafetyPolicy()
    return LexiconSync(LexiconStore(store), policy), policy


def test_empty_store_has_no_lexicon(platform):
    assert platform.lexicon.version() is None and platform.lexicon.read() is None
    sync, policy = replica(platform.store)
    sync.start(lambda: [])
    assert sync.version is None and policy.terms == []
    assert platform.lexicon.read() is None            # nothing to share: nothing written
    assert sync.refresh() is False


def test_replace_bumps_the_version(platform):
    book = platform.lexicon
    assert book.replace(["bad"]).version == 1
    assert book.replace(["bad", "敏感词"]).version == 2
    assert book.replace([]).version == 3                # an empty lexicon is still a lexicon
    stored = book.read()
    assert (stored.version, stored.terms) == (3, []) and book.version() == 3


def test_seed_only_an_empty_store(platform):
    book = platform.lexicon
    assert book.seed(["from-file"]).terms == ["from-file"]
    assert book.seed(["another-file"]).terms == ["from-file"]      # the stored one wins
    sync, policy = replica(platform.store)
    sync.start(lambda: ["yet-another-file"])
    assert policy.terms == ["from-file"] and sync.version == 1


def test_start_seeds_from_the_file_and_the_store_wins_after(platform):
    first, p1 = replica(platform.store)
    first.start(lambda: ["old-install-term"])
    assert p1.terms == ["old-install-term"] and platform.lexicon.read().terms == ["old-install-term"]
    first.replace(["changed-at-run-time"])
    # A restart with the (stale) file: the store's lexicon wins.
    again, p2 = replica(platform.store)
    again.start(lambda: ["old-install-term"])
    assert p2.terms == ["changed-at-run-time"]


def test_a_change_on_one_replica_reaches_the_other_on_refresh(platform):
    a, pa = replica(platform.store)
    b, pb = replica(platform.store)
    a.start(lambda: [])
    b.start(lambda: [])
    pb.check_input("a zebra")                          # nothing blocked yet
    a.replace(["zebra", "敏感词"])
    pa.check_input("a horse")
    with pytest.raises(ContentBlocked):
        pa.check_input("a ZEBRA")                       # this replica at once
    pb.check_input("a zebra")                          # the other only after its refresh
    assert b.refresh() is True and b.version == a.version
    with pytest.raises(ContentBlocked):
        pb.check_input("这是敏感词")
    assert b.refresh() is False                        # unchanged: nothing reloaded
    a.replace([])
    assert b.refresh() is True
    pb.check_input("a zebra")


def test_a_lower_version_is_followed_too(platform):
    """A store restored from a backup (version went back) is enforced, not ignored."""
    from sqlalchemy import update

    from wharf.platform.models import SafetyLexicon

    a, pa = replica(platform.store)
    a.replace(["one"])
    a.replace(["two"])
    with platform.store.write() as s:
        s.execute(update(SafetyLexicon).values(version=1, terms_json='["restored"]'))
    assert a.refresh() is True and pa.terms == ["restored"] and a.version == 1


def test_concurrent_replacements_get_distinct_versions(db_url):
    stores = [Store.open(db_url) for _ in range(4)]
    try:
        with cf.ThreadPoolExecutor(4) as pool:
            versions = list(pool.map(lambda i: LexiconStore(stores[i % 4]).replace([f"t{i}"]).version,
                                     range(12)))
        assert sorted(versions) == list(range(1, 13))
        final = LexiconStore(stores[0]).read()
        assert final.version == 12 and final.terms == [f"t{versions.index(12)}"]
    finally:
        for s in stores:
            s.close()


def test_concurrent_seeds_store_one(db_url):
    stores = [Store.open(db_url) for _ in range(3)]
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            seen = list(pool.map(lambda i: LexiconStore(stores[i]).seed([f"file{i}"]), range(3)))
        assert len({(s.version, tuple(s.terms)) for s in seen}) == 1 and seen[0].version == 1
    finally:
        for s in stores:
            s.close()


def test_a_file_that_differs_from_the_store_is_reported_at_start(platform, caplog):
    platform.lexicon.replace(["stored"])
    sync, policy = replica(platform.store)
    with caplog.at_level("WARNING", logger="wharf.safety"):
        sync.start(lambda: ["edited by hand"])
    assert policy.terms == ["stored"]                  # the store still wins...
    assert "differs from the shared store" in caplog.text   # ...and the operator is told
    caplog.clear()
    sync2, _ = replica(platform.store)
    with caplog.at_level("WARNING", logger="wharf.safety"):
        sync2.start(lambda: ["stored"])
    assert "differs" not in caplog.text
