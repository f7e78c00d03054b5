"""The CPU runner's matmuls, x @ weight.T + bias, with the weights prepared once.

Float weights are reordered once into oneDNN's blocked layout. A plain `F.linear` goes
through MKL with the row-major weights and, for the few rows of a decode step, reads
them at about half the memory bandwidth; the reordered weights are read near it. On a
2-core AVX-512 EPYC, the 30 layers and vocabulary projection of SmolLM2-135M took
25 -> 18 ms (bf16, 1 row), 28 -> 17 ms (8 rows), 60 -> 31 ms (float32, 1 row) and
948 -> 373 ms (float32, 256 rows), with the same IEEE results (bench/README.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wharf.engine.runners import int4, int8

Linear = Callable[[torch.Tensor], torch.Tensor]
# (x, residual) -> residual + f(x): a matmul (or an MLP) with the residual add fused in
PlusResidual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def _onednn_dtypes() -> frozenset[torch.dtype]:
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()    # AVX512-BF16/AMX, not emulated
    return frozenset({torch.float32, torch.bfloat16} if native_bf16 else {torch.float32})


QUANTIZE = ("none", "int8", "int4")


def check(quantize: str) -> str:
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE)}")
    return quantize


def weights_dtype(dtype: str, quantize: str) -> str:
    """The dtype to load a model in for `quantize`. int8: fbgemm's matmuls take float32
    activations ("auto" would pick bfloat16 on a CPU with native bf16, and every matmul
    would fail on a dtype mismatch). int4: float32, so that the groups' scales and minima
    are found from the weights' exact values; it computes in compute_dtype(quantize)."""
    if check(quantize) == "none":
        return dtype
    if dtype not in ("auto", "float32", "fp32"):
        raise ValueError(f"{quantize} quantization picks its own compute dtype; dtype {dtype!r} cannot be "
                         "combined with it (use dtype auto)")
    return "float32"


def compute_dtype(quantize: str, loaded: torch.dtype) -> torch.dtype:
    """The activations' and KV cache's dtype: int4's kernel takes bf16 where the CPU has
    native bf16, else float32; the other modes compute in the dtype the model loaded in."""
    if check(quantize) != "int4":
        return loaded
    return torch.bfloat16 if torch.bfloat16 in _onednn_dtypes() else torch.float32


def _onednn_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight in oneDNN's blocked layout, or None where oneDNN does not take its dtype."""
    if weight.dtype not in _onednn_dtypes():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


def _dense(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
    weight = weight.detach()
    bias = None if bias is None else bias.detach().to(weight.dtype)
    packed = _onednn_weight(weight)
    if packed is None:
        return functools.partial(F.linear, weight=weight, bias=bias)

    def linear(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return linear


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, quantize: str = "none",
                dtype: torch.dtype | None = None) -> Linear:
    """x [rows, in] -> x @ weight.T + bias [rows, out], computing in `dtype` (default: the
    weight's): oneDNN on reordered weights where the dtype allows, else F.linear;
    quantize="int8" is int8.py's fbgemm matmul, "int4" int4.py's 4-bit kernel."""
    quantize = check(quantize)
    if quantize == "int8":
        return int8.int8_linear(weight, bias)
    if quantize == "int4":
        return int4.int4_linear(weight, bias, dtype or weight.dtype, _dense)
    return _dense(weight if dtype is None else weight.to(dtype), bias)   # _dense casts the bias


def make_linear_plus(weight: torch.Tensor, quantize: str = "none", dtype: torch.dtype | None = None) -> PlusResidual:
    """(x, residual) -> residual + x @ weight.T: on oneDNN's float path the add is a
    post-op of the matmul (no second pass over the rows), else make_linear's then an add."""
    packed = _onednn_weight(weight.to(dtype or weight.dtype)) if check(quantize) == "none" else None
    if packed is None:
        linear = make_linear(weight, quantize=quantize, dtype=dtype)
        return lambda x, residual: residual + linear(x)
    return lambda x, residual: torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, None, "add")


def make_gated_mlp(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, quantize: str = "none",
                   dtype: torch.dtype | None = None) -> PlusResidual:
    """(h, residual) -> residual + down(silu(h @ gate.T) * (h @ up.T)), Llama's MLP. On
    oneDNN's float path three matmuls with fused post-ops (silu; times the gate; plus the
    residual): 0.55 -> 0.43 ms a layer at 128 rows, 1.61 -> 1.35 at 428 (bf16, AMX Xeon,
    bench/README.md). Otherwise gate and up in one matmul (one pass over the activations
    for the int8 and int4 kernels), then silu, the product and down's matmul."""
    dtype = dtype or gate.dtype
    packed = ([_onednn_weight(w.to(dtype)) for w in (gate, up, down)] if check(quantize) == "none"
              else [None])
    if all(p is not None for p in packed):
        p_gate, p_up, p_down = packed
        mm = torch.ops.mkldnn._linear_pointwise

        def fused(h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            g = mm(h, p_gate, None, "swish", [], "")
            return mm.binary(mm.binary(h, g, p_up, None, "mul"), residual, p_down, None, "add")
        return fused
    inter = gate.shape[0]
    gate_up = make_linear(torch.cat([gate, up]).contiguous(), quantize=quantize, dtype=dtype)
    down_proj = make_linear(down, quantize=quantize, dtype=dtype)

    def mlp(h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        g, u = gate_up(h).split(inter, dim=-1)
        return residual + down_proj(F.silu(g) * u)
    return mlp
