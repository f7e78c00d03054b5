"""The safety lexicon: input checks and the streaming output guard."""

from __future__ import annotations

import random
import threading

import pytest

from wharf.errors import ContentBlocked
from wharf.platform.safety import Lexicon, SafetyPolicy, load_terms, normalize

TERMS = ["bad", "敏感词", "Forbidden Fruit", "😀x"]


def run_stream(lex: Lexicon, chunks: list[str]):
    g = lex.stream_guard()
    out = []
    for c in chunks:
        out.append(g.feed(c))
    out.append(g.flush())
    return "".join(out), g


def splits(text: str, n: int):
    """Every way to cut text into n (possibly empty) chunks."""
    if n == 1:
        yield [text]
        return
    for i in range(len(text) + 1):
        for rest in splits(text[i:], n - 1):
            yield [text[:i]] + rest


# ---------------------------------------------------------------- input


def test_find_latin_case_width():
    lex = Lexicon(TERMS)
    assert lex.find("this is BAD news") == "bad"
    assert lex.find("this is BaD news") == "bad"
    assert lex.find("full width ＢＡＤ here") == "bad"
    assert lex.find("ｆｏｒｂｉｄｄｅｎ ＦＲＵＩＴ") == "Forbidden Fruit"
    assert lex.find("good news") is None
    assert lex.find("") is None


def test_find_lexicon_side_is_normalised_too():
    lex = Lexicon(["ＳＴＯＰ", "Straße"])
    assert lex.find("please stop now") == "ＳＴＯＰ"
    assert lex.find("STRASSE") == "Straße"          # casefold ß -> ss
    assert lex.find("ﬁne") is None
    assert Lexicon(["fine"]).find("a ﬁne day") == "fine"   # NFKC ligature


def test_find_chinese_and_first_term():
    lex = Lexicon(TERMS)
    assert lex.find("这里有敏感词吗") == "敏感词"
    assert lex.find("敏感 词") is None
    assert lex.find("bad 敏感词") == "bad"           # leftmost wins
    assert lex.find("敏感词 bad") == "敏感词"


def test_check_input_raises_content_blocked():
    pol = SafetyPolicy(TERMS)
    pol.check_input("harmless")
    with pytest.raises(ContentBlocked) as ei:
        pol.check_input("so bad")
    assert ei.value.reason == "input"


def test_zero_width_characters_do_not_hide_a_term():
    lex = Lexicon(["bad"])
    assert lex.find("b\u200bad") == "bad"
    assert lex.find("b\u00ada\u200dd") == "bad"


def test_load_terms_file(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("\ufeff# comment\n  bad  \n\n敏感词\n   # indented comment\nbad\n", encoding="utf-8")
    assert load_terms(p) == ["bad", "敏感词", "bad"]
    lex = Lexicon.from_file(p)
    assert len(lex) == 2 and lex.terms == ["bad", "敏感词"]
    assert SafetyPolicy.from_file(p).find("含敏感词") == "敏感词"
    assert SafetyPolicy.from_file(tmp_path / "missing.txt").find("bad") is None
    assert SafetyPolicy.from_file(None).terms == []


def test_empty_and_blank_terms_ignored():
    lex = Lexicon(["", "   ", "\u200b"])
    assert len(lex) == 0
    assert lex.find("anything") is None


# ---------------------------------------------------------------- stream


def test_empty_lexicon_passes_through_unchanged():
    lex = Lexicon([])
    g = lex.stream_guard()
    for c in ["b", "a", "d", "", "😀", "敏"]:
        assert g.feed(c) == c
    assert g.flush() == ""
    assert not g.blocked


def test_clean_stream_is_unchanged_and_nothing_leaks_at_flush():
    lex = Lexicon(TERMS)
    text = "ba ba ba, 敏感 and forbidden fru but 😀 not bag"
    for chunks in (list(text), [text], [text[:7], text[7:20], text[20:]]):
        out, g = run_stream(lex, chunks)
        assert out == text
        assert not g.blocked and g.term is None
    # the tail that looked like a prefix is released exactly once, at flush
    g = lex.stream_guard()
    assert g.feed("hello ba") == "hello "
    assert g.held == "ba"
    assert g.flush() == "ba"
    assert g.flush() == ""


def test_term_in_one_chunk():
    out, g = run_stream(Lexicon(TERMS), ["this is bad news"])
    assert out == "this is "
    assert g.blocked and g.term == "bad"


def test_term_split_across_two_and_three_chunks():
    lex = Lexicon(TERMS)
    g = lex.stream_guard()
    assert g.feed("so b") == "so "
    assert g.feed("ad!") == ""
    assert g.blocked and g.term == "bad"
    assert g.feed("more") == "" and g.flush() == ""

    out, g = run_stream(lex, ["这是敏", "感", "词啊"])
    assert out == "这是" and g.term == "敏感词"

    out, g = run_stream(lex, ["Ｆｏｒｂｉｄ", "DEN fr", "UIT salad"])
    assert out == "" and g.term == "Forbidden Fruit"


@pytest.mark.parametrize("term,text", [
    ("bad", "well, this is ＢａＤ, truly"),
    ("敏感词", "前文😀敏感词后文"),
    ("Forbidden Fruit", "eat the FORBIDDEN fruit now"),
    ("😀x", "emoji 👍🏽 then 😀x then"),
])
def test_term_split_at_every_boundary(term, text):
    lex = Lexicon(TERMS)
    # where the term (in the original text) starts
    start = next(i for i in range(len(text)) if normalize(text[i:]).startswith(normalize(term)))
    expected = text[:start]
    for n in (2, 3):
        for chunks in splits(text, n):
            out, g = run_stream(lex, chunks)
            assert out == expected, chunks
            assert g.blocked and g.term == term, chunks


def test_random_chunking_property():
    rng = random.Random(7)
    lex = Lexicon(["bad", "敏感词", "ａｂｃ", "👨‍👩‍👧x"])
    alphabet = list("abdcBAD ＢＡＤ敏感词中") + ["👨‍👩‍👧", "😀", "e\u0301", "\u200b"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        # reference: the first match over the whole text, found by brute force
        expected, blocked = text, False
        # cut point = smallest i such that some term starts (normalised) at text[i]
        cut = None
        for i in range(len(text)):
            head = normalize(text[i:])
            if normalize(text[i]) and any(head.startswith(normalize(t)) for t in lex.terms):
                cut = i
                break
        if cut is not None:
            expected, blocked = text[:cut], True
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        out, g = run_stream(lex, chunks)
        assert out == expected, (text, chunks)
        assert g.blocked == blocked, (text, chunks)
        assert lex.find(out) is None


def test_overlapping_terms_cut_before_the_earliest_possible_start():
    lex = Lexicon(["bc", "abcd"])
    out, g = run_stream(lex, ["xab", "c", "d"])
    assert out == "x" and g.blocked          # nothing of "abcd" leaves
    out, g = run_stream(lex, ["xab", "cY"])
    assert out == "xa" and g.term == "bc"    # "abcd" ruled out: only "bc" is cut


def test_multi_codepoint_characters_around_terms():
    lex = Lexicon(["bad", "敏感词"])
    fam = "👨‍👩‍👧‍👦"       # ZWJ sequence
    flag = "🇨🇳"             # regional indicator pair
    skin = "👍🏽"
    text = f"{fam}{flag}{skin}e\u0301 ok {fam}"
    out, g = run_stream(lex, list(text))
    assert out == text and not g.blocked
    out, g = run_stream(lex, [fam[:3], fam[3:] + "ba", "d" + flag])
    assert out == fam and g.term == "bad"
    out, g = run_stream(lex, [skin + "敏", "感词" + skin])
    assert out == skin and g.term == "敏感词"


def test_normalisation_that_changes_length():
    # "ﬁ" normalises to two chars; a term starting mid-expansion cuts before it
    lex = Lexicon(["ifo"])
    out, g = run_stream(lex, ["xﬁ", "fo"])   # "xfi" + "fo" -> "xfifo" contains "ifo" from inside "ﬁ"
    assert out == "x" and g.blocked
    lex = Lexicon(["strasse"])
    out, g = run_stream(lex, ["die Stra", "ß", "e!"])
    assert out == "die " and g.term == "strasse"


def test_replace_swaps_atomically_and_streams_keep_their_lexicon():
    pol = SafetyPolicy(["bad"])
    g_old = pol.stream_guard()
    old = pol.lexicon
    new = pol.replace(["worse"])
    assert pol.lexicon is new and pol.lexicon is not old
    assert pol.find("bad") is None and pol.find("worse") == "worse"
    assert g_old.feed("bad") == "" and g_old.blocked
    g_new = pol.stream_guard()
    assert g_new.feed("bad ") == "bad "

    # concurrent readers never see a half-built lexicon
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            lex = pol.lexicon
            try:
                assert lex.find("a bad word") in ("bad", None)
            except Exception as e:  # pragma: no cover
                errors.append(e)

    ts = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for i in range(200):
        pol.replace(["bad"] if i % 2 else ["other"])
    stop.set()
    for t in ts:
        t.join()
    assert not errors
