"""Structured output in the embedded engine: the grammar's mask inside the batched
sampler, matchers per sequence, the compile cache, and the schema errors."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import torch

from tests.engine.conftest import run_async
from wharf.engine.grammar import Grammars, Matcher, mask_logits
from wharf.engine.sampling import SamplerRow, make_generator, sample
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams, StructuredOutput
from wharf.errors import InvalidParam

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "city": {"type": "string", "enum": ["Paris", "北京", "Lagos"]}}}


def constrained(prompt, schema, *, n_tokens=64, **kw):
    return GenerationRequest(model="smol", prompt=prompt, structured=StructuredOutput(schema),
                             sampling=SamplingParams(max_tokens=n_tokens, **kw))


async def texts(engine, req):
    out: dict[int, list] = {}
    async for c in engine.generate(req):
        out.setdefault(c.index, []).append(c)
    return {i: ("".join(c.text for c in cs), cs[-1].finish_reason) for i, cs in out.items()}


def test_mask_touches_only_constrained_rows(engine):
    grammar = engine.grammars.compile(StructuredOutput({"type": "object"}))
    logits = torch.randn(3, engine.grammars.vocab_size)
    before = logits.clone()
    mask_logits(logits, [1], [Matcher(grammar)])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all(engine.tokenizer.decode([t]).lstrip().startswith("{") for t in allowed)


def test_unconstrained_batch_never_reaches_the_grammar(monkeypatch):
    import wharf.engine.sampling as sampling
    monkeypatch.setattr(sampling, "mask_logits", lambda *a: pytest.fail("mask without a grammar"))
    rows = [SamplerRow(SamplingParams(temperature=0), None), SamplerRow(SamplingParams(), make_generator(1))]
    assert len(sample(torch.randn(2, 100), rows).tokens) == 2


def test_logprobs_are_the_models_not_the_masks(engine):
    grammar = engine.grammars.compile(StructuredOutput({"type": "object"}))
    logits = torch.randn(1, engine.grammars.vocab_size)
    expected = torch.log_softmax(logits, dim=-1)
    row = SamplerRow(SamplingParams(temperature=0, logprobs=3), None, Matcher(grammar))
    result = sample(logits, [row])
    chosen_lp, top = result.logprobs[0]
    assert chosen_lp == pytest.approx(expected[0, result.tokens[0]].item(), abs=1e-5)
    assert [t for t, _ in top] == expected[0].topk(3).indices.tolist()


def test_compiled_once_per_schema_and_errors_name_the_param(engine):
    grammars = Grammars(engine.tokenizer, engine.grammars.vocab_size, {engine.tokenizer.eos_token_id})
    a = grammars.compile(StructuredOutput({"type": "object", "properties": {"a": {"type": "integer"}}}))
    b = grammars.compile(StructuredOutput({"type": "object", "properties": {"a": {"type": "integer"}}}))
    assert a is b and grammars._compile_cached.cache_info().hits == 1
    for bad in ({"type": "nope"}, {"type": "string", "pattern": "(("}, {"properties": 5}):
        with pytest.raises(InvalidParam) as err:
            grammars.compile(StructuredOutput(bad, param="tools"))
        assert err.value.param == "tools" and "/project/" not in err.value.message


def test_schema_holds_greedy_sampled_n_and_chinese(engine):
    prompts = ["Describe a person as JSON:", "请用JSON描述一个人：", "The user record is", "{"]
    reqs = [constrained(p, PERSON, temperature=0) for p in prompts]
    reqs += [constrained(p, PERSON, temperature=1.0, top_p=0.95, seed=i, n=2) for i, p in enumerate(prompts)]

    async def main():
        return await asyncio.gather(*[texts(engine, r) for r in reqs])

    for result in run_async(main()):
        for text, finish in result.values():
            assert finish is FinishReason.STOP, text
            jsonschema.validate(json.loads(text), PERSON)


def test_constrained_and_free_rows_share_a_batch(engine):
    free = GenerationRequest(model="smol", prompt="The capital of France is",
                             sampling=SamplingParams(max_tokens=16, temperature=0))

    async def main():
        alone = await texts(engine, free)
        together = await asyncio.gather(texts(engine, free),
                                        *[texts(engine, constrained("JSON:", PERSON, temperature=0.7,
                                                                    seed=s)) for s in range(3)])
        return alone, together

    alone, together = run_async(main())
    assert together[0] == alone                      # the free row is not touched by the masks
    for r in together[1:]:
        text, finish = r[0]
        assert finish is FinishReason.STOP and jsonschema.validate(json.loads(text), PERSON) is None


def test_grammar_end_stops_even_with_ignore_eos(engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    result = run_async(texts(engine, constrained("Answer:", schema, temperature=0, ignore_eos=True)))
    text, finish = result[0]
    assert finish is FinishReason.STOP and json.loads(text) in ({"ok": True}, {"ok": False})
