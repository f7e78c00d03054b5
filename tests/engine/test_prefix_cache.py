"""Prompt-prefix caching: the bookkeeping alone, then on the real model (same greedy
tokens as without it, hits counted, fewer tokens prefilled)."""

from __future__ import annotations

import asyncio

from tests.engine.conftest import make_engine, run_async
from wharf.engine.prefix_cache import BLOCK, PrefixCache
from wharf.engine.types import GenerationRequest, SamplingParams


def test_blocks_chain_from_the_start_and_the_tail_goes_first():
    cache = PrefixCache(capacity_bytes=4 * BLOCK)
    exported = []

    def export(start, end):
        exported.append((start, end))
        return (start, end), end - start          # one byte per position: a readable budget

    system = list(range(2 * BLOCK))
    a = system + [1000 + i for i in range(BLOCK + 5)]
    cache.store("t", a, export)
    assert exported == [(0, BLOCK), (BLOCK, 2 * BLOCK), (2 * BLOCK, 3 * BLOCK)]
    cache.store("t", a, export)                                    # nothing new to copy
    assert len(exported) == 3
    # Another question after the same system prompt reuses exactly the system's blocks.
    b = system + [2000 + i for i in range(BLOCK + 1)]
    assert cache.lookup("t", b) == [(0, BLOCK), (BLOCK, 2 * BLOCK)]
    assert cache.lookup("t", a[:3 * BLOCK]) == [(0, BLOCK), (BLOCK, 2 * BLOCK)]   # leaves a token to prefill
    assert cache.lookup("t", [5] + system) == []                   # a block is keyed by everything before it
    assert cache.lookup("t", list(range(BLOCK - 1))) == []
    assert cache.lookup("another tenant", b) == []              # namespaces never share blocks
    assert (cache.stats.hits, cache.stats.misses, cache.stats.reused_tokens) == (2, 3, 4 * BLOCK)
    cache.store("t", b, export)                                    # b's third block: 4 blocks, at the budget
    assert cache.stats.bytes == 4 * BLOCK
    cache.lookup("t", b + [1])                                     # b's chain is now the most recent
    cache.store("t", [9] * (BLOCK + 3), export)                    # over budget: a's tail goes first
    assert cache.stats.bytes == 4 * BLOCK
    assert cache.lookup("t", a + [1]) == [(0, BLOCK), (BLOCK, 2 * BLOCK)]
    assert len(cache.lookup("t", b + [1])) == 3


SYSTEM = ("You are Wharf's helpful assistant. Answer in one short sentence, politely, and never make "
          "up facts. If you do not know, say so. 你也可以用中文回答问题，但要简洁明了。") * 2


def _greedy(engine, prompt: str, n_tokens: int = 16):
    async def run():
        ids = []
        req = GenerationRequest(model="smol", prompt=prompt,
                                sampling=SamplingParams(max_tokens=n_tokens, temperature=0, ignore_eos=True))
        async for chunk in engine.generate(req):
            ids += chunk.token_ids
        return ids
    return run


def test_repeated_system_prompt_is_prefilled_once_with_the_same_tokens(model_cache_dir):
    cached, plain = make_engine(model_cache_dir), make_engine(model_cache_dir, prefix_cache_mb=0)
    try:
        prompts = [SYSTEM + q for q in ("\nQ: What is the capital of France?\nA:",
                                        "\nQ: 长城有多长？\nA:", "\nQ: Name a prime number.\nA:")]
        prompt_len = len(cached.tokenizer(prompts[0])["input_ids"])
        assert prompt_len > 2 * BLOCK
        first = run_async(_greedy(cached, prompts[0])())
        assert cached.stats().prefix_cache_hits == 0

        async def rest():          # two requests at once, both starting from the cached prefix
            return await asyncio.gather(_greedy(cached, prompts[1])(), _greedy(cached, prompts[2])())
        later = run_async(rest())
        stats = cached.stats()
        assert stats.prefix_cache_hits == 2
        system_blocks = len(cached.tokenizer(SYSTEM)["input_ids"]) // BLOCK
        assert stats.prefix_cache_tokens >= 2 * (system_blocks - 1) * BLOCK
        # Same greedy tokens as an engine that prefills everything itself.
        assert [first, *later] == [run_async(_greedy(plain, p)()) for p in prompts]
        assert plain.stats().prefix_cache_hits == 0
    finally:
        cached.shutdown()
        plain.shutdown()


def test_prompts_longer_than_the_first_cache_allocation_with_n_choices(engine):
    """The KV cache starts at 256 positions and grows inside inference mode; importing a
    cached prefix and copying a slot for n > 1 must still work after that."""
    long_system = SYSTEM * 5
    assert len(engine.tokenizer(long_system)["input_ids"]) > 300
    before = engine.stats().prefix_cache_hits

    async def ask(question, n):
        texts = [""] * n
        req = GenerationRequest(model="smol", prompt=long_system + question,
                                sampling=SamplingParams(max_tokens=6, temperature=0, n=n))
        async for chunk in engine.generate(req):
            texts[chunk.index] += chunk.text
        return texts

    first = run_async(ask("\nQ: Say hello.\nA:", 1))
    again = run_async(ask("\nQ: Say hello.\nA:", 2))
    assert engine.stats().prefix_cache_hits == before + 1
    assert again == first * 2
