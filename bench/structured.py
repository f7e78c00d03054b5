"""Structured output's cost to a batch: decode throughput of one batch of requests with
none of them constrained, then with a quarter of them under a JSON schema, in one
process on the same engine (rounds interleaved; the ratio is what to read).

    .venv/bin/python bench/structured.py --requests 16 --tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["Write a list of facts about the sea:", "请列出关于长城的事实：", "Notes on the history of Rome:",
           "A shopping list for a week:"]
# An open-ended schema, so constrained rows keep decoding as long as free ones.
SCHEMA = {"type": "object", "required": ["facts"], "additionalProperties": False,
          "properties": {"facts": {"type": "array", "items": {"type": "string"}}}}


async def one_round(engine, requests: int, tokens: int, constrained: int) -> tuple[int, float]:
    from wharf.engine.types import GenerationRequest, SamplingParams, StructuredOutput

    every = requests // constrained if constrained else 0
    guided = set(range(0, every * constrained, every)) if constrained else set()   # spread over the batch

    async def run(i: int) -> int:
        req = GenerationRequest(model="bench", prompt=PROMPTS[i % len(PROMPTS)],
                                structured=StructuredOutput(SCHEMA) if i in guided else None,
                                sampling=SamplingParams(max_tokens=tokens, temperature=0.8, seed=i,
                                                        ignore_eos=True))
        last = 0
        async for chunk in engine.generate(engine.prepare(req)):
            last = chunk.completion_tokens
        return last

    start = time.perf_counter()
    produced = await asyncio.gather(*[run(i) for i in range(requests)])
    return sum(produced), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.25, help="share of the batch under a schema")
    args = ap.parse_args()

    from wharf.cli.serve import GIL_SWITCH_INTERVAL_S
    from wharf.config import Settings
    from wharf.engine.registry import build_engine, default_spec, keep_this_thread_single_threaded

    keep_this_thread_single_threaded()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)      # as `wharf serve` runs
    settings = Settings()
    engine = build_engine(default_spec("bench"), dtype=settings.dtype, cache_dir=settings.cache_dir,
                          max_batch_size=max(args.requests, 8), max_model_len=1024, max_queue=256,
                          prefill_chunk=settings.prefill_chunk, decode_threads=settings.threads)
    constrained = round(args.requests * args.share)
    try:
        asyncio.run(one_round(engine, args.requests, 8, constrained))        # warm-up (and compile)
        rates: dict[str, list[float]] = {"none": [], f"{constrained}/{args.requests}": []}
        counts: dict[str, list[int]] = {k: [] for k in rates}
        for _ in range(args.rounds):
            for label, k in (("none", 0), (f"{constrained}/{args.requests}", constrained)):
                n, secs = asyncio.run(one_round(engine, args.requests, args.tokens, k))
                rates[label].append(n / secs)
                counts[label].append(n)
    finally:
        engine.shutdown()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    med = {k: statistics.median(v) for k, v in rates.items()}
    base, mixed = med["none"], med[f"{constrained}/{args.requests}"]
    print(json.dumps({"cpu": cpu, "requests": args.requests, "tokens": args.tokens, "rounds": args.rounds,
                      "tok_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                      "tokens_out": counts, "median_tok_s": {k: round(v, 1) for k, v in med.items()},
                      "ratio": round(mixed / base, 3)}))


if __name__ == "__main__":
    main()
