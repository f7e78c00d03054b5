"""The batched sampler: greedy rows take each row's argmax (the first of equal maxima, NaN
and infinite rows as argmax gives them), alone or beside sampled rows, and a sampled row's
top-k holds whatever the other rows of its batch ask."""

from __future__ import annotations

import torch

from wharf.engine.sampling import SamplerRow, make_generator, sample
from wharf.engine.types import SamplingParams

GREEDY = SamplingParams(temperature=0)


def test_greedy_rows_are_each_rows_argmax():
    logits = torch.randn(37, 49152)
    assert sample(logits, [SamplerRow(GREEDY, None)] * 37).tokens == logits.argmax(dim=-1).tolist()


def test_a_tie_goes_to_the_first_token():
    logits = torch.full((3, 1000), -1.0)
    logits[:, [7, 300, 999]] = 2.5
    logits[2, 0] = 2.5
    assert sample(logits, [SamplerRow(GREEDY, None)] * 3).tokens == [7, 7, 0]


def test_greedy_beside_sampled_rows():
    logits = torch.randn(4, 5000)
    rows = [SamplerRow(GREEDY, None), SamplerRow(SamplingParams(temperature=1.0), make_generator(3)),
            SamplerRow(GREEDY, None), SamplerRow(SamplingParams(temperature=0.7, top_k=5), make_generator(4))]
    tokens = sample(logits, rows).tokens
    assert [tokens[0], tokens[2]] == logits[[0, 2]].argmax(dim=-1).tolist()
    assert tokens[3] in torch.topk(logits[3], 5).indices.tolist()


def test_top_k_holds_beside_a_row_without_it():
    """A row's top-k is kept when another row of the batch samples the whole vocabulary."""
    logits = torch.randn(2, 5000)
    rows = [SamplerRow(SamplingParams(temperature=1.0), make_generator(1)), None]
    top5 = set(torch.topk(logits[1], 5).indices.tolist())
    for seed in range(20):
        rows[1] = SamplerRow(SamplingParams(temperature=1.0, top_k=5), make_generator(seed))
        assert sample(logits, rows).tokens[1] in top5


def test_nan_and_infinite_rows_give_what_argmax_gives():
    """max(dim) stands in for argmax: the same index on rows with NaN and infinities too."""
    logits = torch.randn(6, 3000)
    logits[0, [10, 2000]] = float("nan")
    logits[1] = float("nan")
    logits[2] = float("-inf")
    logits[3, [5, 9]] = float("inf")
    logits[4, 100], logits[4, 50] = float("inf"), float("nan")
    assert sample(logits, [SamplerRow(GREEDY, None)] * 6).tokens == logits.argmax(dim=-1).tolist()
