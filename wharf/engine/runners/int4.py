"""4-bit weights for the CPU runner: the GGUF's own Q4_1 values, through torch's int4 kernel.

Q4_1 stores each run of 32 weights of a row as 4-bit codes q with a scale d and a
minimum m (w = d*q + m). Quantizing the de-quantized float32 weights again per group of
32 with min/max finds those very d, m and q, so this mode computes with what the GGUF
holds (scales and minima rounded to the compute dtype), not a second approximation.

`torch.ops.aten._weight_int4pack_mm_for_cpu` multiplies a few rows by packed 4-bit
weights at about a third of a bf16 matmul's time (SmolLM2-135M's 30 layers: 5.9 vs
18 ms for one row, bench/README.md), but its cost grows with the rows (65 vs 32 ms at
32 rows): past INT4_MAX_ROWS rows a matmul goes to the same weights de-quantized,
dense, through oneDNN. So this mode trades 1.25x the weights' bf16 memory for the
speed of 4 bits at a few streams and of bf16 at many.

The kernel is always given bf16 activations, whatever the runner computes in: without
native bf16 (an AVX2-only EPYC) its float32 path is scalar, 167 ms for those 30 layers
and the vocabulary at one row, against 14.5 ms in bf16 and 46 ms for the float32
weights through oneDNN. Rounding a few activations to bf16 costs nothing next to the
weights' 4 bits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Linear = Callable[[torch.Tensor], torch.Tensor]

GROUP = 32          # Q4_1's block: 32 weights of a row share a scale and a minimum
# Up to here the 4-bit kernel beats dense bf16. Whole decode steps, the two ways alternating
# (Zen 4 EPYC, bench/README.md): int4/dense 0.89 at 6 rows, 0.85 at 8, 0.98 at 12, 1.10 at 16.
INT4_MAX_ROWS = 8
KERNEL_DTYPE = torch.bfloat16   # the activations the 4-bit kernel is fast with on every x86 CPU


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit codes per group of `group` inputs: (codes int32 [N, K], scale
    [N, K/group], minimum [N, K/group]), float32, w ~ scale * code + minimum."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"int4 needs input sizes that are multiples of {group} (got {k})")
    w = weight.detach().float().reshape(n, k // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-10)
    codes = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    return codes.reshape(n, k), scale, lo


def int4_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                dense: Callable[[torch.Tensor], Linear]) -> Linear:
    """x [rows, in] (dtype) -> x @ W.T + bias with W the 4-bit weights; `dense(W)` makes the
    matmul for more than INT4_MAX_ROWS rows from the de-quantized W."""
    codes, scale, lo = quantize_groups(weight)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    # The kernel de-quantizes as (code - 8) * scale + zero: zero is the minimum moved by 8 steps.
    scales_and_zeros = torch.stack([scale, lo + 8 * scale], dim=-1).transpose(0, 1).contiguous().to(KERNEL_DTYPE)
    n, k = codes.shape
    dequantized = (codes.reshape(n, k // GROUP, GROUP) * scale[..., None] + lo[..., None]).reshape(n, k)
    dense_linear = dense(dequantized.to(dtype))
    bias = None if bias is None else bias.detach().to(dtype)

    def linear(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > INT4_MAX_ROWS:
            y = dense_linear(x)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(KERNEL_DTYPE), packed, GROUP,
                                                           scales_and_zeros).to(x.dtype)
        return y if bias is None else y + bias
    return linear
