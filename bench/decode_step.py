"""The embedded runner's decode step in process, without HTTP or the scheduler: the
milliseconds one step of b sequences takes (100-token contexts), per dtype/quantize mode,
and where the time goes (torch.profiler, --profile). What a change to the runner buys,
measured here before it is measured against the peers (bench.py).

    .venv/bin/python bench/decode_step.py --quantize none int4 --batch 1 8 --steps 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peers import machine  # noqa: E402  (bench/, beside this file)

from wharf.engine.loader import EMBEDDED_IDENTITY, embedded_model_path, load_weights  # noqa: E402
from wharf.engine.runners import int8, linear, torch_llama  # noqa: E402
from wharf.engine.runners.base import Fill  # noqa: E402


def weights_for(quantize: str, dtype: str, cache: Path):
    return load_weights(embedded_model_path(), dtype=linear.weights_dtype(dtype, quantize), cache_root=cache,
                        identity=EMBEDDED_IDENTITY)


def runner_for(quantize: str, dtype: str, cache: Path, slots: int, weights=None, module=torch_llama):
    """The runner `wharf serve` builds for `quantize` (int8 and int4 calibrated as registry.py
    does, tuned as its scheduler does), from `module` (another commit's torch_llama: step_ab.py)."""
    weights = weights or weights_for(quantize, dtype, cache)
    ranges = None if quantize == "none" else int8.activation_ranges(weights.model, weights.tokenizer)
    runner = module.LlamaRunner(weights.model, max_slots=slots, max_len=512, quantize=quantize, act_ranges=ranges)
    if hasattr(runner, "tune"):
        print(f"# {runner.tune()}", flush=True)
    return runner


def fill(runner, slots: int, context: int = 100) -> None:
    """Slots 0..slots-1 each holding a prompt of `context` tokens, ready to decode."""
    prompt = list(range(1000, 1000 + context))
    for slot in range(slots):
        runner.step([], [], [], [Fill(slot, prompt, 0)])


def time_steps(runner, batch: int, steps: int, context: int = 100) -> list[float]:
    fill(runner, batch, context)
    slots, times = list(range(batch)), []
    for i in range(steps):
        t0 = time.perf_counter()
        runner.step(slots, [42] * batch, [context + i] * batch, [])
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantize", nargs="+", default=["none"])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="top ops of 16 steps at the first batch size")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wharf-test-models")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for quantize in args.quantize:
        runner = runner_for(quantize, args.dtype, args.cache, max(args.batch))
        for batch in args.batch:
            times = time_steps(runner, batch, args.steps)
            warm = times[4:]
            print(f"quantize={quantize} dtype={runner.dtype} batch={batch}: median {statistics.median(warm):.2f} "
                  f"ms a step, p90 {sorted(warm)[int(len(warm) * 0.9)]:.2f} ms", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                time_steps(runner, args.batch[0], 16)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
