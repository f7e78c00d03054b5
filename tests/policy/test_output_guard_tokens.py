"""Token-level views (token ids, logprobs) are cut where the output guard cuts the text
(issue 15, finding 2): Run.chunks over a scripted engine, no model."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from wharf.api.pipeline import Run
from wharf.engine.prompt import PreparedRequest
from wharf.engine.types import Chunk, FinishReason, GenerationRequest, SamplingParams, TokenLogprob
from wharf.platform.safety import SafetyPolicy


class ScriptedEngine:
    """Yields one chunk per group of tokens: [(text, [token texts])...] per choice."""

    def __init__(self, script: list[list[tuple[str, list[str]]]], logprobs: bool):
        self.script, self.logprobs = script, logprobs
        self.info = SimpleNamespace(name="scripted")

    async def generate(self, prepared):
        n_id = 100
        for step in range(max(len(s) for s in self.script)):
            for i, choice in enumerate(self.script):
                if step >= len(choice):
                    continue
                text, toks = choice[step]
                ids = list(range(n_id, n_id + len(toks)))
                n_id += len(toks)
                lps = [TokenLogprob(token=t, token_id=k, logprob=-0.5, top=[(t, k, -0.5), ("zz", 1, -2.0)])
                       for t, k in zip(toks, ids)] if self.logprobs else None
                last = step == len(choice) - 1
                yield Chunk(index=i, text=text, token_ids=ids, logprobs=lps,
                            finish_reason=FinishReason.STOP if last else None, prompt_tokens=3,
                            completion_tokens=step + 1)


def prepared_for(req: GenerationRequest) -> PreparedRequest:
    return PreparedRequest(request=req, prompt_text=req.prompt, prompt_tokens=3, max_tokens=64,
                           prompt_ids=[1, 2, 3])


def run(script, terms, logprobs=True):
    pipeline = SimpleNamespace(safety=SafetyPolicy(terms), record=lambda *a, **k: None,
                               metrics=SimpleNamespace(content_blocked=lambda where: None))
    req = GenerationRequest(model="scripted", prompt="p", sampling=SamplingParams(n=len(script), logprobs=1))
    prepared = prepared_for(req)
    r = Run(pipeline, caller=None, engine=ScriptedEngine(script, logprobs), prepared=prepared, lease=None,
            reserved=False)

    async def collect():
        return [c async for c in r.chunks()]
    chunks = asyncio.run(collect())
    out = {}
    for i in range(len(script)):
        mine = [c for c in chunks if c.index == i]
        out[i] = SimpleNamespace(
            text="".join(c.text for c in mine),
            tokens=[lp.token for c in mine for lp in (c.logprobs or [])],
            ids=[t for c in mine for t in c.token_ids],
            finish=next(c.finish_reason for c in mine if c.finish_reason),
            chunks=mine)
    return out, r


def per_token(text: str, size: int = 3) -> list[tuple[str, list[str]]]:
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return [(p, [p]) for p in pieces]


@pytest.mark.parametrize("logprobs", [True, False])
def test_clean_answer_keeps_every_token(logprobs):
    text = "The capital of France is Paris."
    out, r = run([per_token(text)], ["banana"], logprobs)
    o = out[0]
    assert o.text == text and o.finish is FinishReason.STOP and r.status == "ok"
    assert len(o.ids) == len(per_token(text))
    assert ("".join(o.tokens) == text) if logprobs else o.tokens == []
    assert all((c.logprobs is None) == (not logprobs) for c in o.chunks)


def test_blocked_answer_carries_no_token_of_the_term():
    script = [[(" The", [" The"]), (" capital", [" capital"]), (" is", [" is"]), (" Par", [" Par"]),
               ("is", ["is"]), (".", ["."])]]
    out, r = run(script, ["Paris"])
    o = out[0]
    assert o.finish is FinishReason.CONTENT and r.status == "blocked"
    assert o.text == " The capital is"              # " Par" went with its token: text cut there too
    assert "".join(o.tokens) == o.text
    assert o.ids == [100, 101, 102]
    # the guard held " Par" as a possible start of the term: no token of it ever left
    assert all(lp.token not in (" Par", "is", ".") for c in o.chunks for lp in c.logprobs)


def test_term_inside_one_token_and_across_a_multi_token_chunk():
    # one chunk of three tokens, the term in the middle one: none of the chunk leaves
    script = [[("Hi", ["Hi"]), (" a bad day", [" a", " bad", " day"])]]
    out, _ = run(script, ["bad"])
    assert out[0].text == "Hi" and out[0].tokens == ["Hi"] and out[0].ids == [100]
    # the term starts mid-token: that token and its text are withheld
    out, _ = run([[("ok", ["ok"]), (" xbad", [" xbad"])]], ["bad"])
    assert out[0].text == "ok" and out[0].tokens == ["ok"]


def test_held_prefix_released_later_brings_its_tokens():
    script = [[("a", ["a"]), (" ba", [" ba"]), ("n", ["n"]), ("!", ["!"])]]
    out, _ = run(script, ["bad"])
    o = out[0]
    assert o.text == "a ban!" and o.finish is FinishReason.STOP
    assert o.tokens == ["a", " ba", "n", "!"] and o.ids == [100, 101, 102, 103]
    # at every point of the stream the tokens sent so far spell the text sent so far
    text, toks = "", ""
    for c in o.chunks:
        text += c.text
        toks += "".join(lp.token for lp in c.logprobs)
        assert text == toks


def test_n_choices_each_cut_at_their_own_point():
    script = [per_token("one two three"), per_token("so bad it hurts"), per_token("敏感词 here")]
    out, r = run(script, ["bad", "敏感词"])
    assert out[0].text == "one two three" and out[0].finish is FinishReason.STOP
    assert out[1].finish is FinishReason.CONTENT and "".join(out[1].tokens) == out[1].text == "so "
    assert out[2].finish is FinishReason.CONTENT and out[2].text == "" and out[2].tokens == []
    assert r.status == "blocked"


def test_random_scripts_tokens_always_spell_the_text():
    rng = random.Random(2)
    words = ["the", " bad", "ba", "d", " 敏", "感", "词", " ok", "b\u2062", "ad", " x", "é"]
    for _ in range(300):
        toks = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        script, i = [], 0
        while i < len(toks):          # chunks of 1-3 tokens, as a detokenizer holding bytes makes
            k = rng.randint(1, 3)
            group = toks[i:i + k]
            script.append(("".join(group), group))
            i += k
        out, _ = run([script], ["bad", "敏感词"])
        o = out[0]
        assert "".join(o.tokens) == o.text, script
        assert SafetyPolicy(["bad", "敏感词"]).find(o.text) is None
        full = "".join(toks)
        assert full.startswith(o.text)
        assert (o.finish is FinishReason.CONTENT) == (SafetyPolicy(["bad", "敏感词"]).find(full) is not None)


def test_quota_cut_sends_no_token_of_unsent_text():
    pipeline = SimpleNamespace(safety=SafetyPolicy([]), record=lambda *a, **k: None,
                               metrics=SimpleNamespace(content_blocked=lambda where: None),
                               platform=SimpleNamespace(quota=SimpleNamespace(extend=lambda *a, **k: False)))
    req = GenerationRequest(model="scripted", prompt="p", sampling=SamplingParams(logprobs=1))
    prepared = prepared_for(req)
    r = Run(pipeline, caller=None, engine=ScriptedEngine([per_token("abcdefghijkl")], True), prepared=prepared,
            lease=None, reserved=True, reserved_chars=7)

    async def collect():
        return [c async for c in r.chunks()]
    chunks = asyncio.run(collect())
    text = "".join(c.text for c in chunks)
    tokens = "".join(lp.token for c in chunks for lp in c.logprobs)
    assert text == "abcdefg" and chunks[-1].finish_reason is FinishReason.LENGTH
    assert tokens == "abcdef" and text.startswith(tokens)
