"""Prefix caching: TTFT of requests that share a long system prompt, with the cache on
and off, in one process on the same engine settings (the ratio is what to read).

    .venv/bin/python bench/prefix.py --system-tokens 256 --requests 12 [--quantize int8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYSTEM_SENTENCE = ("You are the support assistant of a shipping company. Answer briefly and politely, cite the "
                   "tracking number when you have one, and never promise a delivery date. ")
QUESTIONS = ["Where is my parcel?", "我的包裹什么时候到？", "Can I change the delivery address?",
             "How do I return an item?", "Why was my package delayed?", "Do you ship to Canada?"]


def system_prompt(tokenizer, tokens: int) -> str:
    text = ""
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += SYSTEM_SENTENCE
    return tokenizer.decode(tokenizer(text)["input_ids"][:tokens])


async def ttft(engine, prompt: str) -> float:
    from wharf.engine.types import GenerationRequest, SamplingParams

    start = time.perf_counter()
    req = GenerationRequest(model="bench", prompt=prompt, sampling=SamplingParams(max_tokens=1, temperature=0))
    async for _ in engine.generate(req):
        pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system-tokens", type=int, default=256)
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--quantize", default="none")
    args = ap.parse_args()

    from wharf.engine.registry import build_engine, default_spec, keep_this_thread_single_threaded

    keep_this_thread_single_threaded()
    cache = Path(os.environ.get("WHARF_TEST_MODEL_CACHE", Path.home() / ".cache" / "wharf-test-models"))
    rows = {}
    for label, mb in (("prefix cache off", 0), ("prefix cache on", 256)):
        engine = build_engine(default_spec("bench"), dtype="auto", quantize=args.quantize, cache_dir=cache,
                              max_batch_size=8, max_model_len=2048, max_queue=64, prefill_chunk=256,
                              prefix_cache_mb=mb)
        system = system_prompt(engine.tokenizer, args.system_tokens)
        prompts = [f"{system}\nCustomer: {QUESTIONS[i % len(QUESTIONS)]} (#{i})\nAssistant:"
                   for i in range(args.requests + 1)]
        times = [asyncio.run(ttft(engine, p)) for p in prompts][1:]   # the first one fills the cache
        stats = engine.stats()
        engine.shutdown()
        rows[label] = (statistics.median(times), stats.prefix_cache_tokens)
    off, on = rows["prefix cache off"][0], rows["prefix cache on"][0]
    print(f"system prompt {args.system_tokens} tokens, {args.requests} requests, quantize={args.quantize}")
    for label, (t, reused) in rows.items():
        print(f"  {label:17s} TTFT p50 {t * 1000:7.1f} ms   prompt tokens reused: {reused}")
    print(f"  ratio off/on: {off / on:.2f}x")


if __name__ == "__main__":
    main()
