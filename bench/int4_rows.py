"""Where int4's 4-bit kernel stops paying: whole int4 decode steps of b sequences with the
kernel for every row count against the de-quantized bf16 weights past 4 rows, the two
alternating in one process (int4.INT4_MAX_ROWS is read at each matmul). Below 1: the
kernel is faster at that batch; set INT4_MAX_ROWS to the last such b on a new CPU kind.

    .venv/bin/python bench/int4_rows.py --batch 4 6 8 12 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decode_step import fill, runner_for  # noqa: E402  (bench/, beside this file)
from peers import machine  # noqa: E402
from step_ab import paired_steps  # noqa: E402

from wharf.engine.runners import int4  # noqa: E402

DENSE_PAST = 4          # the reference: the kernel up to 4 rows, dense bf16 past them
KERNEL_ALWAYS = 10**6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", nargs="+", type=int, default=[4, 6, 8, 12, 16])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wharf-test-models")
    args = ap.parse_args()
    print(f"# {machine()}")
    runner = runner_for("int4", "auto", args.cache, max(args.batch))
    fill(runner, max(args.batch))

    def step_with(limit: int):
        def step(*decode):
            int4.INT4_MAX_ROWS = limit
            runner.step(*decode, [])
        return step

    saved = int4.INT4_MAX_ROWS
    try:
        for batch in args.batch:
            dense, kernel = paired_steps(step_with(DENSE_PAST), step_with(KERNEL_ALWAYS), batch, args.steps)
            print(f"batch {batch}: dense past {DENSE_PAST} rows {dense:.2f} ms, 4-bit kernel {kernel:.2f} ms, "
                  f"kernel/dense {kernel / dense:.3f}", flush=True)
    finally:
        int4.INT4_MAX_ROWS = saved


if __name__ == "__main__":
    with torch.inference_mode():
        main()
