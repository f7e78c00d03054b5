"""One request's numbers never fail another request's work (issue 15, finding 1).

The scheduler is driven directly, without the pipeline's SamplingParams.check, so the
degenerate values reach the sampler as a buggy or future caller could send them."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.engine.conftest import run_async
from wharf.engine.types import SAMPLING_EPS, FinishReason, GenerationRequest, SamplingParams
from wharf.errors import Internal, InvalidParam

# Each of these is 0 or infinite once it is a float32: the sampler would divide by zero.
POISON = [dict(temperature=1e-300), dict(temperature=1e-38), dict(temperature=1e-46),
          dict(repetition_penalty=1e-300), dict(repetition_penalty=1e-40),
          dict(presence_penalty=1e300), dict(frequency_penalty=-1e300),
          dict(temperature=float("nan")), dict(repetition_penalty=float("inf"))]


@pytest.mark.parametrize("poison", POISON, ids=lambda p: ",".join(f"{k}={v!r}" for k, v in p.items()))
def test_a_poisoned_request_fails_alone(engine, poison):
    async def main():
        victims = [GenerationRequest(model="smol", prompt=p, sampling=SamplingParams(
            max_tokens=24, ignore_eos=True, **kw))
            for p, kw in (("你好，请介绍一下你自己。", dict(temperature=0)),
                          ("Once upon a time", dict(temperature=0.8, seed=7)),
                          ("List three colors:", dict(temperature=0.7, repetition_penalty=1.2, n=2)))]
        attack = GenerationRequest(model="smol", prompt="Say hello", sampling=SamplingParams(
            max_tokens=24, ignore_eos=True, **{"temperature": 1.0, **poison}))

        async def run(req):
            try:
                return [c async for c in engine.generate(req)]
            except Internal as exc:
                return exc
        tasks = [asyncio.create_task(run(v)) for v in victims]
        await asyncio.sleep(0.2)            # the victims are running when the attack lands
        attacked = await run(attack)
        return attacked, await asyncio.gather(*tasks)

    attacked, victims = run_async(main())
    for chunks in victims:
        assert not isinstance(chunks, Exception), chunks
        finals = [c for c in chunks if c.finish_reason is not None]
        assert finals and all(c.finish_reason is FinishReason.LENGTH and c.completion_tokens == 24
                              for c in finals), finals
    # The attack itself either failed cleanly or (a poison that happens to be harmless on
    # this path, e.g. an infinite penalty on greedy-looking logits) ran to its length.
    assert isinstance(attacked, Internal) or attacked[-1].finish_reason is FinishReason.LENGTH
    stats = engine.stats()
    assert stats.running == 0 and stats.waiting == 0


@pytest.mark.parametrize("field,value", [
    ("temperature", 1e-300), ("temperature", 1e-38), ("temperature", SAMPLING_EPS / 2), ("top_p", 0.0),
    ("top_p", 1e-300), ("top_k", 1)])
def test_every_spelling_of_greedy_becomes_temperature_zero(field, value):
    p = SamplingParams(**{"temperature": 0.9, "top_p": 0.9, "top_k": 40, field: value}).check()
    assert (p.temperature, p.top_p, p.top_k) == (0.0, 1.0, 0) and p.greedy


@pytest.mark.parametrize("field,value", [
    ("temperature", -1e-300), ("temperature", float("inf")), ("temperature", float("nan")), ("temperature", 1e300),
    ("top_p", 1.0000001), ("top_p", float("nan")), ("repetition_penalty", 1e-300), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("repetition_penalty", 1e300), ("repetition_penalty", float("nan")),
    ("presence_penalty", 1e300), ("presence_penalty", float("-inf")), ("frequency_penalty", -1e300),
    ("frequency_penalty", float("nan")), ("top_k", -1), ("n", 0)])
def test_values_the_engine_cannot_compute_are_refused_by_name(field, value):
    with pytest.raises(InvalidParam) as err:
        SamplingParams(**{field: value}).check()
    assert err.value.param == field


def test_ordinary_values_pass_unchanged():
    p = SamplingParams(temperature=0.7, top_p=0.95, top_k=50, repetition_penalty=1.3, presence_penalty=-2,
                       frequency_penalty=2).check()
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.7, 0.95, 50, 1.3)
    assert math.isclose(p.presence_penalty, -2)
