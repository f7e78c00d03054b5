"""The runner's one pass per step (decode rows and fill chunks together), its cache that
grows in slots and positions as sequences need them, and the KV budget that bounds the
batch. On the real embedded model in float32, beside runs of the same tokens one by one."""

from __future__ import annotations

import time

import pytest
import torch

from tests.engine.conftest import make_engine
from wharf.engine.runners.base import Fill
from wharf.engine.runners.decode_attention import DEFAULT, MANY_FROM, Plan
from wharf.engine.runners.torch_llama import LlamaRunner, kv_bytes_per_token

PROMPTS = [[1, 504, 3458, 282, 4649, 314], [19556, 28, 638, 359, 346, 47, 5248, 1543, 11, 1097], [9690, 1717]]


@pytest.fixture(scope="module")
def model(hf_model):
    return hf_model[0]


def test_one_pass_equals_separate_passes(model):
    """Two decodes at different lengths, a fill from position 0, and a fill continuing a
    half-filled slot, in one step: the same logits as each on its own."""
    mixed, alone = (LlamaRunner(model, max_slots=8, max_len=256) for _ in range(2))
    for runner in (mixed, alone):
        runner.prefill(0, PROMPTS[0], 0)
        runner.prefill(1, PROMPTS[1], 0)
        runner.prefill(3, PROMPTS[1][:4], 0)              # half of a prompt, the rest below
    decode, fills = mixed.step([0, 1], [42, 43], [len(PROMPTS[0]), len(PROMPTS[1])],
                               [Fill(2, PROMPTS[2], 0), Fill(3, PROMPTS[1][4:], 4), Fill(4, PROMPTS[0][:3], 0, False)])
    expected_decode = torch.stack([alone.decode([0], [42], [len(PROMPTS[0])])[0],
                                   alone.decode([1], [43], [len(PROMPTS[1])])[0]])
    torch.testing.assert_close(decode, expected_decode, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fills[0], alone.prefill(2, PROMPTS[2], 0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fills[1], alone.prefill(3, PROMPTS[1][4:], 4), atol=1e-4, rtol=1e-4)
    assert fills[2] is None                                  # no logits asked for: none computed
    # The KV the pass wrote is the KV the separate passes wrote: the next decode agrees.
    torch.testing.assert_close(mixed.decode([3], [7], [len(PROMPTS[1])]), alone.decode([3], [7], [len(PROMPTS[1])]),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["grouped", "gqa"])
def test_decode_rows_in_scattered_slots_equal_contiguous_ones(model, kind):
    runner = LlamaRunner(model, max_slots=8, max_len=256, attention=Plan(few=(kind,)))
    for slot in (0, 1, 5, 6):
        runner.prefill(slot, PROMPTS[slot % 2], 0)
    contiguous = runner.decode([0, 1], [42, 43], [len(PROMPTS[0]), len(PROMPTS[1])])
    scattered = runner.decode([1, 6], [43, 42], [len(PROMPTS[1]), len(PROMPTS[0])])   # 6 holds PROMPTS[0]
    torch.testing.assert_close(scattered, contiguous.flip(0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["matmul", "grouped", "gqa"])
@pytest.mark.parametrize("layout", ["contiguous", "gaps", "reversed", "scattered", "sparse"])
def test_a_wide_decode_attends_as_each_slot_alone(model, layout, kind):
    """From MANY_FROM slots a decode step attends with the "many" ranking's first kind
    that applies (decode_attention.py): the same logits as each slot decoded alone, at
    different lengths, in contiguous slots, in a range with two slots that do not decode
    (one holding another sequence), contiguous but listed in reverse, and spread out
    (where "matmul" does not apply and SDPA takes over; SDPA reads the range of slots up to
    twice as wide as their number, "sparse" ones by gathering their caches). The prompts
    are long enough that the cache's 256 allocated positions are few to read."""
    width = MANY_FROM + 4
    runner = LlamaRunner(model, max_slots=3 * width + 1, max_len=256, attention=Plan(many=(kind, "grouped")))
    slots = {"contiguous": list(range(width)), "gaps": [s for s in range(width + 2) if s not in (3, 7)],
             "reversed": list(range(width))[::-1], "scattered": [2 * i + 1 for i in range(width)],
             "sparse": [3 * i + 1 for i in range(width)]}[layout]
    prompts = {slot: (PROMPTS[i % 3] * 40)[:150 + 3 * i] for i, slot in enumerate(slots)}
    for slot, prompt in prompts.items():
        runner.prefill(slot, prompt, 0)
    if layout == "gaps":
        runner.prefill(7, PROMPTS[1], 0)               # in the range, not decoding
    tokens, positions = [40 + i for i in range(width)], [len(prompts[s]) for s in slots]
    picked = runner.attention.pick(slots, positions, runner.capacity)
    assert picked == ("grouped" if kind == "matmul" and layout in ("scattered", "sparse") else kind)
    wide = runner.decode(slots, tokens, positions)
    alone = torch.stack([runner.decode([slot], [token], [position])[0]
                         for slot, token, position in zip(slots, tokens, positions)])
    torch.testing.assert_close(wide, alone, atol=1e-4, rtol=1e-4)
    assert (wide.argmax(-1) == alone.argmax(-1)).all()


def test_a_plan_takes_matmul_only_for_many_slots_close_together_in_a_cache_not_much_longer():
    plan = Plan(few=("gqa", "grouped"), many=("matmul", "gqa", "grouped"))
    many, long = list(range(MANY_FROM)), [150] * MANY_FROM
    assert plan.pick(many, long, capacity=256) == "matmul"
    assert plan.pick(many[:-1], long[:-1], capacity=256) == "gqa"                # below MANY_FROM
    assert plan.pick([2 * s for s in many], long, capacity=256) == "gqa"         # spread out
    assert plan.pick(many, [100] * MANY_FROM, capacity=256) == "gqa"             # 256 > 7/4 of 101
    assert DEFAULT.pick(many[:4], long[:4], capacity=256) == "grouped"


def test_tune_ranks_every_kind_on_this_cpu_and_the_engine_tunes_its_runner(model, model_cache_dir):
    runner = LlamaRunner(model, max_slots=8, max_len=256)
    assert runner.attention is DEFAULT                       # until measured
    said = runner.tune()
    plan = runner.attention
    assert plan.few == ("grouped",) and sorted(plan.many) == ["gqa", "grouped", "matmul"]
    assert len(plan.times_ms) == 4 and all(ms > 0 for _, ms in plan.times_ms)
    assert said.startswith("decode attention: ") and "matmul@64" in said
    eng = make_engine(model_cache_dir, max_batch_size=8)
    try:
        deadline = time.monotonic() + 30
        while eng.scheduler.runner.attention is DEFAULT and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.scheduler.runner.attention.times_ms         # measured on the model thread
    finally:
        eng.shutdown()


def test_the_cache_grows_in_slots_and_positions_only_as_needed(model):
    runner = LlamaRunner(model, max_slots=64, max_len=1024)
    assert runner.k_cache.shape[1] == 8 and runner.capacity == 256     # what a first request needs
    before = runner.prefill(2, PROMPTS[1], 0)
    runner.prefill(40, PROMPTS[1], 0)                                  # a slot past those allocated
    assert runner.k_cache.shape[1] == 41 and runner.capacity == 256    # max(needed, twice 8)
    long_prompt = (PROMPTS[1] * 40)[:300]
    runner.prefill(3, long_prompt, 0)                                  # past 256 positions
    assert runner.capacity == 512
    # What slot 2 held survived both reallocations.
    torch.testing.assert_close(runner.decode([2], [42], [len(PROMPTS[1])]),
                               runner.decode([40], [42], [len(PROMPTS[1])]), atol=1e-4, rtol=1e-4)
    assert before.shape == (runner.vocab_size,)


def test_kv_budget_bounds_the_batch(model_cache_dir, hf_model):
    """100 MiB of float32 KV holds two sequences of 1,024 tokens of SmolLM2 (45 KiB a token)."""
    per_token = kv_bytes_per_token(hf_model[0].config, torch.float32)
    assert per_token == 2 * 30 * 3 * 64 * 4
    logs = []
    eng = make_engine(model_cache_dir, max_batch_size=8, kv_cache_mb=100, log=logs.append)
    try:
        assert eng.stats().max_batch_size == 100 * 2**20 // (per_token * 1024) == 2
        assert any("2 sequences at once, not 8" in m and "WHARF_KV_CACHE_MB" in m for m in logs), logs
    finally:
        eng.shutdown()
