"""The int8 runner (wharf/engine/runners/int8.py): how close it stays to the float model,
that it serves a mixed batch like the float one, and its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine.conftest import complete, make_engine, mixed_batch, run_async
from wharf.engine.runners import int8
from wharf.engine.runners.torch_llama import LlamaRunner
from wharf.engine.types import GenerationRequest, SamplingParams

# Not the calibration texts: agreement is measured on text the smoothing never saw.
HELD_OUT = [
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made. It allowed",
    "人工智能正在改变我们的生活方式，从智能手机到自动驾驶汽车，它无处不在。",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Photosynthesis converts light energy into chemical energy that plants store as sugar. The process",
]


@pytest.fixture(scope="module")
def runners(hf_model):
    model, tok = hf_model
    ranges = int8.activation_ranges(model, tok)
    return (LlamaRunner(model, max_slots=2, max_len=256),
            LlamaRunner(model, max_slots=2, max_len=256, quantize="int8", act_ranges=ranges), tok)


def _next_token_logits(runner, ids):
    """Teacher-forced: the logits after each prefix, one prefill step per token."""
    return torch.stack([runner.prefill(0, ids[i:i + 1], i) for i in range(len(ids))])


def test_int8_stays_close_to_the_float_model(runners):
    exact, quantized, tok = runners
    agree = total = 0
    kls = []
    for text in HELD_OUT:
        ids = tok(text)["input_ids"]
        ref, got = _next_token_logits(exact, ids), _next_token_logits(quantized, ids)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += len(ids)
        kls.append(float(F.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                  reduction="batchmean")))
    # Measured: 92 % top-1 agreement, mean KL 0.03 (without smoothing: 75 %, KL 0.11).
    assert agree / total >= 0.85, (agree, total)
    assert sum(kls) / len(kls) < 0.06, kls


def test_float_path_is_untouched_by_the_int8_machinery(runners, hf_model):
    exact, _, tok = runners
    model, _ = hf_model
    ids = tok(HELD_OUT[0])["input_ids"]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(exact.prefill(1, ids, 0), ref, atol=1e-4)


def test_int8_engine_serves_a_mixed_batch(model_cache_dir):
    engine = make_engine(model_cache_dir, quantize="int8")
    try:
        assert engine.info.quantize == "int8"
        results = mixed_batch(engine)
        alone = complete(engine, "The capital of France is", max_tokens=12, temperature=0)
    finally:
        engine.shutdown()
    assert all(text and finish is not None for text, finish in results)
    assert "Paris" in results[0][0] and "Paris" in alone[0]


def test_int8_refusals(model_cache_dir, hf_model, engine, tmp_path):
    model, _ = hf_model
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        make_engine(model_cache_dir, quantize="int3")
    with pytest.raises(ValueError, match="activation ranges"):
        LlamaRunner(model, max_slots=1, max_len=8, quantize="int8")
    # An architecture the int8 runner does not cover is refused, not silently served in float.
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from wharf.engine.registry import ModelSpec, build_engine

    cfg = GPTNeoXConfig(vocab_size=len(engine.tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    engine.tokenizer.save_pretrained(tmp_path / "neox")
    with pytest.raises(ValueError, match="Llama-family models only"):
        build_engine(ModelSpec(name="tiny-neox", path=tmp_path / "neox"), dtype="float32", quantize="int8",
                     cache_dir=tmp_path / "cache", max_batch_size=2, max_model_len=64, max_queue=2,
                     prefill_chunk=32)


def test_int8_loads_float32_whatever_auto_picks(model_cache_dir):
    # dtype "auto" is bfloat16 on a CPU with native bf16; fbgemm's int8 matmuls need float32
    # activations, so an int8 engine loads float32 there too, and serves.
    eng = make_engine(model_cache_dir, dtype="auto", quantize="int8", max_batch_size=2)
    try:
        assert eng.info.dtype == "float32" and eng.info.quantize == "int8"

        async def go():
            req = GenerationRequest(model="smol", prompt="北京是", sampling=SamplingParams(max_tokens=4, temperature=0))
            return [c async for c in eng.generate(req)]
        chunks = run_async(go())
        assert chunks[-1].finish_reason is not None and chunks[-1].completion_tokens == 4
    finally:
        eng.shutdown()
    with pytest.raises(ValueError, match="cannot be combined"):
        make_engine(model_cache_dir, dtype="bfloat16", quantize="int8")
