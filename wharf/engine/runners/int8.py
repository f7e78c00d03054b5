"""Int8 weights for the CPU runner: fbgemm's dynamic-int8 matmul, with SmoothQuant.

fbgemm multiplies int8 weights (one scale per output row) by activations it quantizes
on the fly, per tensor, to 8 bits (7 on a CPU without VNNI). On a 2-core AVX2 CPU that is 2-4x faster than
fp32 MKL and reads 4x fewer weight bytes per decode step (bench/README.md); torch's
weight-only int8 and `_int_mm` kernels are 5-50x slower than fp32 here, so this is
the one fast int8 path.

Per-tensor activation scales are what costs accuracy: a few hidden channels carry
values far larger than the rest. SmoothQuant (Xiao et al., 2023) moves that range
into the weights, where per-row scales absorb it: for each input channel j,
s_j = max|X_j|^a / max|W_j|^(1-a); the weights' columns are multiplied by s and the
preceding RMSNorm weight (or the producing rows) divided by it, which leaves the
float model's function unchanged. max|X_j| comes from a forward pass over a few
built-in texts (no data is downloaded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from wharf.engine.loader import cpu_flags

SMOOTH_ALPHA = 0.6          # best of 0.3-0.9 on SmolLM2-135M: 92 % top-1 agreement with fp32, KL 0.03

Linear = Callable[[torch.Tensor], torch.Tensor]

# Short, varied (English, Chinese, code, chat markup): enough to find the outlier channels.
CALIBRATION_TEXTS = (
    "The quick brown fox jumps over the lazy dog while the committee discusses next year's budget.",
    "北京是中华人民共和国的首都，也是全国的政治、文化中心。我们今天学习机器学习的基本概念。",
    "import numpy as np\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n\nfor i in range(10):\n    print(i * 2)\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTell me a story about "
    "a dragon.<|im_end|>\n<|im_start|>assistant\nOnce upon a time, in a kingdom far away,",
    "Climate change affects weather patterns, sea levels and ecosystems; scientists measure it with "
    "satellites, ocean buoys and ice cores. 气候变化影响着天气、海平面和生态系统。",
)


def cpu_has_vnni() -> bool:
    """VNNI (AVX512-VNNI or AVX-VNNI) sums int8 products in int32; without it fbgemm's
    AVX2 kernels go through int16 pairs, which 8-bit activations can saturate."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
    """x -> x @ weight.T + bias as fbgemm's dynamic-int8 matmul (float32 out; x in any float
    dtype, taken as float32)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    with warnings.catch_warnings():   # torch marks quantized tensors deprecated; the pin keeps them
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.long), 0,
                                             torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())
    # reduce_range: 7-bit activations, as AVX2 without VNNI needs (8 bits saturate its int16
    # sums); with VNNI all 8 bits.
    reduce_range = not cpu_has_vnni()

    def linear(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), packed, reduce_range=reduce_range)
    return linear


@torch.inference_mode()
def activation_ranges(model, tokenizer, texts=CALIBRATION_TEXTS) -> dict[str, torch.Tensor]:
    """max |x| per input channel seen by every nn.Linear of `model` (by module name)."""
    ranges: dict[str, torch.Tensor] = {}

    def watch(name):
        def hook(_module, args):
            seen = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()
            ranges[name] = torch.maximum(ranges[name], seen) if name in ranges else seen
        return hook

    hooks = [m.register_forward_pre_hook(watch(name)) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return ranges


def smoothing(act_range: torch.Tensor, weight: torch.Tensor, alpha: float = SMOOTH_ALPHA) -> torch.Tensor:
    """The per-input-channel factors s: use weight * s and input / s."""
    w_range = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (act_range.clamp(min=1e-5) ** alpha / w_range ** (1 - alpha)).clamp(min=1e-5).to(weight.dtype)
