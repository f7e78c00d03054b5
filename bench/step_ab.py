"""The runner's decode step, this checkout's against another commit's, in ONE process with
the two versions' steps alternating: on a shared 2-core VM the same step drifts by 20 %
between runs minutes apart, so two separate runs of decode_step.py cannot show a 3 %
change; paired steps can (B/A below 1: this checkout is faster).

    .venv/bin/python bench/step_ab.py --against HEAD~1 --quantize int4 --batch 1 8 64

A is `git show REV:wharf/engine/runners/torch_llama.py` loaded beside this checkout's (B);
both import the rest of wharf/ from this checkout, and both run on the same weights, each
with its own KV cache (so the weights of both are read in turn, as a step's are).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decode_step import fill, runner_for, weights_for  # noqa: E402  (bench/, beside this file)
from peers import machine  # noqa: E402

from wharf.engine.runners import torch_llama  # noqa: E402
from wharf.engine.runners.base import Fill  # noqa: E402

RUNNER = "wharf/engine/runners/torch_llama.py"


def runner_module_at(rev: str, folder: Path):
    path = folder / "torch_llama_at_rev.py"
    path.write_text(subprocess.run(["git", "show", f"{rev}:{RUNNER}"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("torch_llama_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paired_steps(step_a, step_b, batch: int, steps: int, context: int = 100) -> tuple[float, float]:
    """Median ms of `step_x(slots, tokens, positions)` for A and B, decode steps of `batch`
    filled slots, the two alternating (A first on even steps)."""
    slots, times = list(range(batch)), ([], [])
    for i in range(steps):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (step_a, step_b)[which](slots, [42] * batch, [context + i] * batch)
            times[which].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[0][4:]), statistics.median(times[1][4:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="HEAD", help="the commit whose runner is A")
    ap.add_argument("--quantize", default="none", choices=["none", "int8", "int4"])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--fills", type=int, default=0,
                    help="100-token prompts filled from position 0 in every step beside the decodes (arrivals)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wharf-test-models")
    args = ap.parse_args()
    print(f"# {machine()}")
    slots = max(args.batch)
    arrivals = [list(range(3000 + 100 * j, 3100 + 100 * j)) for j in range(args.fills)]
    weights = weights_for(args.quantize, args.dtype, args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        a = runner_for(args.quantize, args.dtype, args.cache, slots + args.fills, weights=weights,
                       module=runner_module_at(args.against, Path(tmp)))
        b = runner_for(args.quantize, args.dtype, args.cache, slots + args.fills, weights=weights,
                       module=torch_llama)
        for runner in (a, b):
            fill(runner, slots)
        fills = [Fill(slots + j, prompt, 0) for j, prompt in enumerate(arrivals)]
        for batch in args.batch:
            ms_a, ms_b = paired_steps(lambda *step: a.step(*step, fills), lambda *step: b.step(*step, fills),
                                      batch, args.steps)
            with_fills = f" + {args.fills} fills of 100" if args.fills else ""
            print(f"quantize={args.quantize} batch={batch}{with_fills}: A ({args.against}) {ms_a:.2f} ms, "
                  f"B (this checkout) {ms_b:.2f} ms, B/A {ms_b / ms_a:.3f}", flush=True)


if __name__ == "__main__":
    main()
