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
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wharf.engine.runners import int4, int8

Linear = Callable[[torch.Tensor], torch.Tensor]

# oneDNN compiles a kernel for each row count of each matmul shape and keeps 1,024 of them
# by default. A step's rows (its decodes plus prompt chunks of any length, up to 640 with
# the default batch and chunk) take hundreds of counts, so traffic with varied prompts had
# its kernels compiled again and again: 32 decodes beside one fill of 1-359 tokens, 300
# counts in turn, 102-109 ms a step on the second and third pass at 1,024 against 84-86 ms
# with room for them all (AMX Xeon, bench/README.md). 4,096 holds the five shapes of a
# model at every count, for ~70 KB each. oneDNN reads it when it makes its first primitive.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")


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


def _dense(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
    weight = weight.detach()
    bias = None if bias is None else bias.detach().to(weight.dtype)
    if weight.dtype not in _onednn_dtypes():
        return functools.partial(F.linear, weight=weight, bias=bias)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())

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
