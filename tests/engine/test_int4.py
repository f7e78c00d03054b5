"""The int4 mode (wharf/engine/runners/int4.py): that its 4-bit groups are the GGUF's
own Q4_1 values, that both of its matmul paths compute them, how close the model stays
to float32, and that an engine serves with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine.conftest import make_engine, mixed_batch
from tests.engine.test_int8 import HELD_OUT, _next_token_logits
from wharf.engine.runners import int4, int8
from wharf.engine.runners.linear import compute_dtype, make_linear
from wharf.engine.runners.torch_llama import LlamaRunner


def test_groups_are_the_gguf_q4_1_values(hf_model):
    # The embedded model is a Q4_1 GGUF: its layers' float32 weights are d * q + m per 32.
    model, _ = hf_model
    for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
        w = model.model.layers[3].get_submodule(name).weight.detach()
        codes, scale, lo = int4.quantize_groups(w)
        n, k = w.shape
        back = (codes.reshape(n, k // 32, 32) * scale[..., None] + lo[..., None]).reshape(n, k)
        assert codes.min() >= 0 and codes.max() <= 15
        assert (back - w).abs().max() <= 1e-5 * w.abs().max(), name


@pytest.mark.parametrize("rows", [1, 3, int4.INT4_MAX_ROWS, int4.INT4_MAX_ROWS + 1, 64])
def test_both_paths_multiply_by_the_same_weights(rows):
    torch.manual_seed(rows)
    dtype = compute_dtype("int4", torch.float32)
    w, bias = torch.randn(96, 64) * 0.1, torch.randn(96)
    codes, scale, lo = int4.quantize_groups(w)
    deq = (codes.reshape(96, 2, 32) * scale[..., None] + lo[..., None]).reshape(96, 64)
    x = torch.randn(rows, 64)
    got = make_linear(w, bias, "int4", dtype)(x.to(dtype)).float()
    want = F.linear(x.to(dtype).float(), deq.to(dtype).float(), bias.to(dtype).float())
    assert torch.allclose(got, want, atol=0.05, rtol=0.02), (got - want).abs().max()


def test_refuses_inputs_that_are_not_whole_groups():
    with pytest.raises(ValueError, match="multiples of 32"):
        int4.quantize_groups(torch.randn(8, 40))


def test_int4_stays_close_to_the_float_model(hf_model):
    model, tok = hf_model
    exact = LlamaRunner(model, max_slots=1, max_len=256)
    quantized = LlamaRunner(model, max_slots=1, max_len=256, quantize="int4",
                            act_ranges=int8.activation_ranges(model, tok))
    assert quantized.dtype == compute_dtype("int4", torch.float32)
    agree = total = 0
    for text in HELD_OUT:
        ids = tok(text)["input_ids"]
        ref, got = _next_token_logits(exact, ids), _next_token_logits(quantized, ids)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += len(ids)
        # A whole prompt at once goes through the dense path: the same next token.
        assert quantized.prefill(0, ids, 0).argmax() == got[-1].argmax()
    # The float model is the de-quantized GGUF itself; what differs is bf16 arithmetic.
    assert agree / total >= 0.9, (agree, total)


def test_int4_engine_serves_a_mixed_batch(model_cache_dir):
    engine = make_engine(model_cache_dir, dtype="auto", quantize="int4")
    try:
        assert engine.info.quantize == "int4"
        assert engine.info.dtype == str(compute_dtype("int4", torch.float32)).removeprefix("torch.")
        results = mixed_batch(engine)
    finally:
        engine.shutdown()
    assert all(text and finish is not None for text, finish in results)
    assert "Paris" in results[0][0]
    with pytest.raises(ValueError, match="cannot be combined"):
        make_engine(model_cache_dir, dtype="bfloat16", quantize="int4")
