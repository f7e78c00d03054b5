"""Fair shares of the batch (issue 15, finding 7): a request never holds more than its
share while another waits; what it holds over its share it gives back by preemption,
and the preempted choice recomputes its KV and goes on exactly where it stopped."""

from __future__ import annotations

import asyncio

import pytest

from tests.engine.conftest import make_engine, run_async
from wharf.engine.fair_share import water_fill
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams


@pytest.mark.parametrize("demands,capacity,expected", [
    ({"a": 32, "b": 1}, 32, {"a": 31, "b": 1}),
    ({"a": 32, "b": 32}, 32, {"a": 16, "b": 16}),
    ({"a": 5, "b": 5, "c": 5}, 8, {"a": 3, "b": 3, "c": 2}),     # the remainder by arrival
    ({"a": 1, "b": 1, "c": 1}, 2, {"a": 1, "b": 1, "c": 0}),     # FCFS when all want one
    ({"a": 2, "b": 40, "c": 3}, 32, {"a": 2, "b": 27, "c": 3}),
    ({"a": 0, "b": 4}, 8, {"a": 0, "b": 4}),
])
def test_water_fill_is_max_min_fair(demands, capacity, expected):
    assert water_fill(demands, capacity) == expected


@pytest.fixture(scope="module")
def small_engine(model_cache_dir):
    eng = make_engine(model_cache_dir, max_batch_size=4)
    yield eng
    eng.shutdown()


def _req(prompt, n_tokens, tenant, n=1, **kw):
    return GenerationRequest(model="smol", prompt=prompt, tenant=tenant, sampling=SamplingParams(
        max_tokens=n_tokens, temperature=0, ignore_eos=True, n=n, **kw))


@pytest.mark.parametrize("bystander_tenant", ["other account", "same account"])
def test_a_wide_request_gives_a_slot_back_to_a_bystander(small_engine, bystander_tenant):
    eng = small_engine

    async def main():
        done = []

        async def run(name, req):
            chunks = [c async for c in eng.generate(req)]
            done.append(name)
            return chunks
        wide = asyncio.create_task(run("wide", _req("Tell me a story about a lighthouse.", 64, "same account", n=4)))
        while eng.stats().running < 4:                 # the wide request holds every slot
            await asyncio.sleep(0.01)
        before = eng.scheduler.preemptions
        short = await run("short", _req("你好", 5, bystander_tenant))
        assert not wide.done(), "the bystander waited for the whole wide request"
        return done, await wide, short, eng.scheduler.preemptions - before

    done, wide, short, preempted = run_async(main())
    assert done == ["short", "wide"] and preempted >= 1
    assert sum(c.completion_tokens for c in short if c.finish_reason) == 5
    # Greedy choices are identical, the preempted (and recomputed) one included.
    texts = ["".join(c.text for c in wide if c.index == i) for i in range(4)]
    ids = [[t for c in wide if c.index == i for t in c.token_ids] for i in range(4)]
    assert all(len(x) == 64 for x in ids) and len(set(map(tuple, ids))) == 1, texts
    assert [c.finish_reason for c in wide if c.finish_reason] == [FinishReason.LENGTH] * 4
    assert eng.stats().running == 0 and eng.stats().waiting == 0


def test_preempted_penalised_sampling_resumes_with_its_counts(small_engine):
    """A preempted choice rebuilds its penalty counts from its tokens: with a repetition
    penalty its output equals the same request's output when nothing preempted it."""
    eng = small_engine
    prompt, kw = "List animals: cat, dog,", dict(repetition_penalty=1.3, frequency_penalty=0.5)

    async def alone():
        return [t for c in [c async for c in eng.generate(_req(prompt, 60, "t", n=4, **kw))]
                if c.index == 3 for t in c.token_ids]

    async def crowded():
        task = asyncio.create_task(_collect(eng, _req(prompt, 60, "t", n=4, **kw)))
        while eng.stats().running < 4:
            await asyncio.sleep(0.01)
        await _collect(eng, _req("Hi", 8, "u"))
        chunks = await task
        return [t for c in chunks if c.index == 3 for t in c.token_ids]

    before = eng.scheduler.preemptions
    quiet = run_async(alone())
    busy = run_async(crowded())
    assert eng.scheduler.preemptions > before
    assert busy == quiet


async def _collect(eng, req):
    return [c async for c in eng.generate(req)]
