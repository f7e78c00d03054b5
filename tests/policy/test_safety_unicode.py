"""The lexicon against invisible characters and other spellings of the same text
(issue 15, finding 8): every default-ignorable code point, NFKC/case forms, composed
and decomposed marks, on input and in the stream guard, with cuts at the right place."""

from __future__ import annotations

import random
import unicodedata

import pytest

from wharf.platform.safety import Lexicon, _normalize_with_map, is_ignorable, normalize

TERMS = ["bad", "敏感词", "café", "한국", "ガス"]
LEX = Lexicon(TERMS)

# The separators the issue found passing, one per class.
REPORTED = [0x2062, 0x2063, 0x200E, 0x202C, 0x2066, 0x180E, 0x034F, 0xFE0F, 0xE0020, 0x061C, 0x115F]

ALL_CF = [cp for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Cf"]
# Default_Ignorable_Code_Point beyond Cf (PropList.txt): Other_Default_Ignorable_Code_Point
# and Variation_Selector.
OTHER_DI = ([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2065, 0x3164, 0xFFA0] + list(range(0x180B, 0x1810))
            + list(range(0xFE00, 0xFE10)) + list(range(0xFFF0, 0xFFF9)) + list(range(0xE0000, 0xE1000)))
CONTROLS = [cp for cp in list(range(0x20)) + list(range(0x7F, 0xA0)) if not chr(cp).isspace()]
IGNORED = sorted(set(ALL_CF + OTHER_DI + CONTROLS))


def run_stream(lex: Lexicon, chunks: list[str]):
    g = lex.stream_guard()
    out = [g.feed(c) for c in chunks]
    out.append(g.flush())
    return "".join(out), g


def test_the_class_is_what_unicode_says():
    assert len(ALL_CF) > 150                      # 163 in Unicode 14
    assert all(is_ignorable(chr(cp)) for cp in IGNORED)
    for cp in REPORTED:
        assert cp in IGNORED, hex(cp)
    # tags and both variation-selector blocks, whole
    assert {0xE0000, 0xE0001, 0xE007F, 0xE0100, 0xE01EF, 0xFE00, 0xFE0F} <= set(IGNORED)
    # visible things, whitespace and ordinary marks are not ignored
    for c in "a 中\n\t\u00a0\u3000\u0301\u3099éß😀\U0001F3FD\ue000":
        assert not is_ignorable(c), repr(c)


def test_every_ignorable_code_point_inside_a_term_is_seen_through_on_input():
    missed = []
    for cp in IGNORED:
        s = chr(cp)
        for text, term in ((f"so b{s}ad", "bad"), (f"这是敏{s}感{s}词", "敏感词"), (f"{s}b{s}a{s}d{s}", "bad")):
            if LEX.find(text) != term:
                missed.append((hex(cp), term))
    assert not missed


def test_every_ignorable_code_point_inside_a_term_is_caught_in_a_stream():
    missed = []
    for cp in IGNORED:
        s = chr(cp)
        # split across chunks with the separator on either side of the boundary
        for chunks, want in ((["ok b", s, "ad!"], "ok "), (["ok b" + s, "a" + s + "d"], "ok "),
                             (["前文敏" + s, "感", s + "词后"], "前文")):
            out, g = run_stream(LEX, chunks)
            if out != want or not g.blocked:
                missed.append((hex(cp), chunks, out))
    assert not missed


@pytest.mark.parametrize("cp", REPORTED, ids=hex)
def test_reported_separators(cp):
    s = chr(cp)
    assert LEX.find(f"b{s}a{s}d") == "bad"
    assert LEX.find(f"敏{s}感词") == "敏感词"
    assert LEX.find(f"ｂ{s}ＡＤ") == "bad"                # with full width and case too
    out, g = run_stream(LEX, ["x b", s, "a", s, "d y"])
    assert out == "x " and g.term == "bad"


def test_ignorables_alone_are_not_held_back():
    # the guard holds back only what could still become a term
    g = LEX.stream_guard()
    assert g.feed("hello\u2062\u200e") == "hello\u2062\u200e"
    assert g.feed(" b\u2062") == " " and g.held == "b\u2062"
    assert g.feed("\u2063x") == "b\u2062\u2063x"
    assert g.flush() == ""
    g = LEX.stream_guard()
    assert g.feed("敏\ufe0f") == "" and g.held == "敏\ufe0f"
    assert g.flush() == "敏\ufe0f" and not g.blocked


def test_cut_maps_back_to_the_original_text():
    # invisible characters before a term are released; the cut is before its first letter
    out, g = run_stream(LEX, ["a\u2062\u200e", "\U000E0020", "b", "\u034fad"])
    assert out == "a\u2062\u200e\U000E0020" and g.blocked
    # length-changing normalisation around the separators
    lex = Lexicon(["strasse"])
    out, g = run_stream(lex, ["die STRA\u2062", "ß", "\u180ee!"])
    assert out == "die " and g.term == "strasse"
    norm, owner = _normalize_with_map("x\u2062ﬁ\u200eß")
    assert norm == "xfiss" and owner == [0, 2, 2, 4, 4, 5]


def test_nfkc_and_case_forms():
    assert LEX.find("ＢＡＤ") == "bad"
    assert LEX.find("ᵇａᵈ") == "bad"                                # superscripts fold under NFKC
    assert Lexicon(["fine"]).find("a ﬁne day") == "fine"
    assert Lexicon(["ガス"]).find("ｶﾞｽ") == "ガス"                  # half-width kana + voiced mark
    assert Lexicon(["Straße"]).find("STRASSE") == "Straße"
    assert Lexicon(["ｂａｄ"]).find("so Bad") == "ｂａｄ"            # the lexicon side is folded too
    assert Lexicon(["敏感词"]).find("⽂敏感词") == "敏感词"            # a Kangxi radical before it


def test_composed_and_decomposed_marks_match_each_other():
    assert LEX.find("un cafe\u0301 noir") == "café"
    assert Lexicon(["cafe\u0301"]).find("un café") == "cafe\u0301"
    assert LEX.find("한국어") == "한국"
    assert LEX.find("\u1112\u1161\u11ab\u1100\u116e\u11a8") == "한국"     # conjoining jamo
    # marks in any order that is canonically the same
    lex = Lexicon(["\u1ec7"])                                           # ệ
    for text in ("\u00ea\u0323", "e\u0323\u0302", "e\u0302\u0323", "\u1eb9\u0302"):
        assert lex.find(text) == "\u1ec7", ascii(text)
    # streamed decomposed: the base letter is held until its mark is seen
    out, g = run_stream(LEX, ["un caf", "e", "\u0301"])
    assert out == "un " and g.term == "café"


def test_a_term_does_not_match_part_of_a_character():
    # decomposition must not make a term match the first half of a letter
    assert Lexicon(["cafe"]).find("un café") is None
    assert Lexicon(["하"]).find("한국") is None            # 한 = 하 + final ㄴ
    assert Lexicon(["하"]).find("하나") == "하"
    assert Lexicon(["か"]).find("がっこう") is None
    assert Lexicon(["か"]).find("かな") == "か"
    # but a later match in the same text is still found
    assert Lexicon(["cafe"]).find("café, cafe") == "cafe"
    assert Lexicon(["ab", "abc"]).find("abc\u0301 ab!") == "ab"
    assert Lexicon(["cafe"]).find("café " * 50 + "cafe") == "cafe"       # many false starts first
    assert Lexicon(["cafe", "fe"]).find("un café") is None
    assert Lexicon(["abc", "b"]).find("abc\u0301") == "b"                # a shorter one inside it
    assert Lexicon(["abc", "bc\u0301"]).find("xabc\u0301") == "bc\u0301"
    out, g = run_stream(Lexicon(["cafe"]), ["un caf", "é", " au lait"])
    assert out == "un café au lait" and not g.blocked


def test_stream_and_input_agree_with_random_invisibles():
    rng = random.Random(15)
    lex = Lexicon(["bad", "敏感词", "ａｂｃ"])
    seps = [chr(cp) for cp in REPORTED] + [chr(rng.choice(IGNORED)) for _ in range(20)]
    alphabet = list("abdcBAD ＢＡＤ敏感词中x") + seps
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        cut = None
        for i in range(len(text)):     # reference: the first original position a term starts at
            head = normalize(text[i:])
            if normalize(text[i]) and any(head.startswith(normalize(t)) for t in lex.terms):
                cut = i
                break
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        out, g = run_stream(lex, chunks)
        assert g.blocked == (cut is not None) == (lex.find(text) is not None), (text, chunks)
        assert out == (text if cut is None else text[:cut]), (text, chunks)
        assert lex.find(out) is None


def test_normalize_and_the_mapped_form_agree():
    rng = random.Random(3)
    pool = "aé\u0301\u0323\u0302ß ﬁ한\u11ab\u3099か中\u2062\ufe0f\U000E0020Ａ"
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        norm, owner = _normalize_with_map(text)
        assert norm == normalize(text) == unicodedata.normalize("NFD", norm)
        assert len(owner) == len(norm) + 1 and owner == sorted(owner)
