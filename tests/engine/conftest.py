"""In-process engines on the real embedded model (float32, so greedy output can be
compared token for token with transformers)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from wharf.engine.registry import build_engine, default_spec


def run_async(coro):
    """asyncio.run in a fresh thread: other suites (Playwright's sync API) may leave an
    event loop running in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _complete(engine, prompt: str, **sampling) -> tuple[str, str | None]:
    from wharf.engine.types import GenerationRequest, SamplingParams

    text, finish = "", None
    req = GenerationRequest(model="smol", prompt=prompt, sampling=SamplingParams(**sampling))
    async for chunk in engine.generate(req):
        text += chunk.text
        finish = chunk.finish_reason or finish
    return text, finish


def complete(engine, prompt: str, **sampling) -> tuple[str, str | None]:
    """(text, finish reason) of one request served alone."""
    return run_async(_complete(engine, prompt, **sampling))


def mixed_batch(engine) -> list[tuple[str, str | None]]:
    """(text, finish reason) of three requests served together: greedy English, sampled
    Chinese, greedy code."""
    async def batch():
        return await asyncio.gather(
            _complete(engine, "The capital of France is", max_tokens=12, temperature=0),
            _complete(engine, "长城是", max_tokens=12, temperature=0.8, seed=1),
            _complete(engine, "def add(a, b):", max_tokens=12, temperature=0))
    return run_async(batch())


def make_engine(cache_dir, **kw):
    opts = dict(dtype="float32", cache_dir=cache_dir, max_batch_size=8, max_model_len=1024,
                max_queue=64, prefill_chunk=256)
    opts.update(kw)
    return build_engine(default_spec("smol"), **opts)


@pytest.fixture(scope="session")
def engine(model_cache_dir):
    eng = make_engine(model_cache_dir)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def hf_model(engine, model_cache_dir):
    """transformers' own model and tokenizer from the same converted weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = next(p for p in model_cache_dir.iterdir() if p.is_dir() and not p.name.count(".tmp"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)
