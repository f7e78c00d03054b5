"""The engine against transformers itself, batching, sampling, stops, limits, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from tests.engine.conftest import make_engine, run_async
from wharf.engine.types import FinishReason, GenerationRequest, SamplingParams
from wharf.errors import ContextLengthExceeded, InvalidParam, Overloaded

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "人工智能是",
           "List three colors:", "The quick brown fox", "In 1492,", "Water boils at"]


async def collect(engine, req):
    chunks = [c async for c in engine.generate(req)]
    by_index = {}
    for c in chunks:
        by_index.setdefault(c.index, []).append(c)
    return chunks, by_index


def greedy(prompt, n_tokens=24, **kw):
    return GenerationRequest(model="smol", prompt=prompt,
                             sampling=SamplingParams(max_tokens=n_tokens, temperature=0, **kw))


def ids_of(chunks):
    return [t for c in chunks for t in c.token_ids]


def hf_greedy(hf_model, prompt, n_tokens=24):
    model, tok = hf_model
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n_tokens, do_sample=False)
    return out[0, enc.input_ids.shape[1]:].tolist()


def test_greedy_matches_transformers_alone_and_in_a_mixed_batch(engine, hf_model):
    expected = [hf_greedy(hf_model, p) for p in PROMPTS]

    async def main():
        alone = [ids_of((await collect(engine, greedy(p)))[0]) for p in PROMPTS]
        # The same greedy requests inside a batch that also holds sampled requests.
        noise = [GenerationRequest(model="smol", prompt=p, sampling=SamplingParams(max_tokens=40, temperature=1.0,
                                                                                     top_k=20, seed=i))
                 for i, p in enumerate(PROMPTS[:3])]
        results = await asyncio.gather(*[collect(engine, greedy(p)) for p in PROMPTS],
                                       *[collect(engine, r) for r in noise])
        return alone, [ids_of(r[0]) for r in results[:len(PROMPTS)]]

    alone, batched = run_async(main())
    for exp, a, b in zip(expected, alone, batched):
        exp = exp[:len(a)] if len(a) < len(exp) else exp  # engine stops at EOS, HF pads after it
        assert a == exp
        assert b == exp


def test_same_seed_same_output_and_n_samples_share_one_prompt(engine):
    def req(seed, n=1):
        return GenerationRequest(model="smol", prompt="Write a word:",
                                 sampling=SamplingParams(max_tokens=16, temperature=1.0, seed=seed, n=n))

    async def main():
        a = ids_of((await collect(engine, req(7)))[0])
        b = ids_of((await collect(engine, req(7)))[0])
        _, many = await collect(engine, req(None, n=6))
        return a, b, many

    a, b, many = run_async(main())
    assert a == b
    assert sorted(many) == list(range(6))
    assert len({tuple(ids_of(v)) for v in many.values()}) > 1   # distinct samples


def test_greedy_n_choices_are_identical(engine):
    _, by_index = run_async(collect(engine, greedy("Hello", 12, n=3)))
    texts = {"".join(c.text for c in v) for v in by_index.values()}
    assert len(by_index) == 3 and len(texts) == 1


def test_stop_string_cuts_before_it_and_reports_stop(engine):
    chunks, _ = run_async(collect(engine, greedy("The capital of France is", 30)))
    full = "".join(c.text for c in chunks)
    stop = full.strip().split()[2]          # a word in the middle of the greedy answer
    chunks, _ = run_async(collect(engine, greedy("The capital of France is", 30, stop=[stop])))
    text = "".join(c.text for c in chunks)
    assert stop not in text and full.startswith(text)
    assert chunks[-1].finish_reason is FinishReason.STOP


def test_length_finish_and_token_counts(engine):
    chunks, _ = run_async(collect(engine, greedy("Count: 1, 2, 3,", 5, ignore_eos=True)))
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].completion_tokens == 5 == len(ids_of(chunks))


def test_logprobs_are_reported_per_token(engine):
    chunks, _ = run_async(collect(engine, greedy("Hi", 4, logprobs=3, ignore_eos=True)))
    lps = [lp for c in chunks for lp in c.logprobs]
    assert len(lps) == 4
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][2] == pytest.approx(lp.logprob, abs=1e-4)   # greedy picks the top token


def test_repetition_penalty_changes_greedy_output(engine):
    prompt = "one one one one one one"
    plain = ids_of(run_async(collect(engine, greedy(prompt, 12, ignore_eos=True)))[0])
    penalised = ids_of(run_async(collect(engine, greedy(prompt, 12, ignore_eos=True,
                                                          repetition_penalty=1.8, frequency_penalty=1.0)))[0])
    assert plain != penalised


def test_context_window_is_enforced(engine):
    with pytest.raises(ContextLengthExceeded):
        engine.prepare(greedy("hello", engine.context_length))
    with pytest.raises(InvalidParam):
        engine.prepare(greedy("hello", 0))
    long_prompt = "word " * (engine.context_length + 10)
    with pytest.raises(ContextLengthExceeded):
        engine.prepare(GenerationRequest(model="smol", prompt=long_prompt, sampling=SamplingParams(max_tokens=None)))


def test_short_request_is_not_blocked_by_a_long_one(engine):
    async def main():
        done = []

        async def run(name, n):
            await collect(engine, greedy("Tell me a story.", n, ignore_eos=True))
            done.append(name)

        long = asyncio.create_task(run("long", 200))
        await asyncio.sleep(0.3)
        await run("short", 5)
        await long
        return done

    assert run_async(main()) == ["short", "long"]


def test_cancelled_stream_leaves_the_batch_within_a_step(engine):
    async def main():
        gen = engine.generate(greedy("Tell me a long story.", 500, ignore_eos=True))
        async for _ in gen:
            if engine.stats().running:
                break
        assert engine.stats().running == 1
        await gen.aclose()
        before = engine.stats().generated_tokens
        deadline = time.monotonic() + 5
        while engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return engine.stats().running, engine.stats().generated_tokens - before

    running, extra_tokens = run_async(main())
    assert running == 0
    assert extra_tokens <= 2    # at most the step that was already in flight


def test_full_queue_answers_overloaded_at_once(model_cache_dir):
    eng = make_engine(model_cache_dir, max_batch_size=1, max_queue=1)
    try:
        async def main():
            first = asyncio.create_task(collect(eng, greedy("a", 300, ignore_eos=True)))
            await asyncio.sleep(0.5)                          # running, holding the only slot
            second = asyncio.create_task(collect(eng, greedy("b", 5)))
            await asyncio.sleep(0.1)                          # waiting: the queue is full
            start = time.monotonic()
            with pytest.raises(Overloaded):
                await collect(eng, greedy("c", 5))
            refused_in = time.monotonic() - start
            first.cancel()
            await asyncio.gather(first, second, return_exceptions=True)
            return refused_in

        assert run_async(main()) < 0.5
    finally:
        eng.shutdown()


def test_generic_runner_matches_transformers(tmp_path, engine):
    """An architecture outside the Llama family (GPT-NeoX, as Pythia and Dolly) runs
    through the generic runner and still matches transformers' greedy output."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from wharf.engine.registry import ModelSpec, build_engine

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(engine.tokenizer), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                        eos_token_id=engine.tokenizer.eos_token_id, bos_token_id=engine.tokenizer.bos_token_id)
    model = GPTNeoXForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "neox")
    engine.tokenizer.save_pretrained(tmp_path / "neox")
    eng = build_engine(ModelSpec(name="tiny-neox", path=tmp_path / "neox"), dtype="float32",
                       cache_dir=tmp_path / "cache", max_batch_size=4, max_model_len=256, max_queue=8,
                       prefill_chunk=64)
    try:
        assert eng.info.backend == "torch-generic"
        enc = engine.tokenizer("Hello world", return_tensors="pt")
        with torch.no_grad():
            expected = model.generate(**enc, max_new_tokens=10, do_sample=False)[0, enc.input_ids.shape[1]:].tolist()

        async def main():
            return await asyncio.gather(*[collect(eng, greedy("Hello world", 10, ignore_eos=True)) for _ in range(3)])

        for chunks, _ in run_async(main()):
            assert ids_of(chunks) == expected
    finally:
        eng.shutdown()
