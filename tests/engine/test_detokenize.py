"""Stop strings with holdback and UTF-8 safe incremental detokenization."""

import pytest

from wharf.engine.detokenize import IncrementalDetokenizer, StopMatcher


def run_stops(stops, deltas):
    m = StopMatcher(stops)
    out = [m.feed(d) for d in deltas]
    if not m.stopped:
        out.append(m.flush())
    return out, m.stopped


def test_stop_string_split_across_deltas_is_never_emitted():
    out, stopped = run_stops(["STOP"], ["Hello S", "TO", "P and more"])
    assert stopped and "".join(out) == "Hello "
    assert all("S" not in piece for piece in out[1:])


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    out, stopped = run_stops(["###"], ["a#", "#b", "c"])
    assert not stopped and "".join(out) == "a##bc"
    assert out[0] == "a"          # "#" held back until resolved


def test_earliest_of_several_stops_wins_and_chinese_stop():
    out, stopped = run_stops(["。", "end"], ["你好", "世界。", "再见"])
    assert stopped and "".join(out) == "你好世界"


def test_no_stops_passes_everything_through_at_once():
    out, stopped = run_stops([], ["a", "b"])
    assert out == ["a", "b", ""] and not stopped


@pytest.mark.parametrize("text", ["人工智能是未来。🚀🎉 Ünïcødé mix 中文 and 👩‍👩‍👧", "😀" * 10 + "漢字"])
def test_incremental_detokenizer_never_splits_a_character(engine, text):
    tok = engine.tokenizer
    prompt = tok("prefix:")["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) / 3   # multi-token characters are really exercised
    d = IncrementalDetokenizer(tok, prompt)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)
