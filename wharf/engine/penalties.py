"""What the penalties need to know of each KV slot's sequence: which tokens it has seen
(prompt and output, for the repetition penalty) and how often it generated each (for
presence and frequency penalties), as [slots, vocab] tensors beside the sampler."""

from __future__ import annotations

import torch

from wharf.engine.sampling import SamplerRow, apply_penalties


class PenaltyState:
    def __init__(self, slots: int, vocab: int):
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool)
        self.counts = torch.zeros(slots, vocab, dtype=torch.int32)

    def reset(self, slot: int, token_ids: list[int], prompt_len: int) -> None:
        """The slot now holds this sequence (new, or moved after a preemption)."""
        self.seen[slot].zero_()
        self.seen[slot, token_ids] = True
        self.counts[slot].zero_()
        out = token_ids[prompt_len:]
        if out:
            self.counts[slot] += torch.bincount(torch.tensor(out), minlength=self.counts.shape[1]).to(torch.int32)

    def record(self, slot: int, token: int) -> None:
        self.seen[slot, token] = True
        self.counts[slot, token] += 1

    def apply(self, logits: torch.Tensor, rows: list[SamplerRow], slots: list[int]) -> torch.Tensor:
        index = torch.tensor(slots)
        return apply_penalties(logits, rows, self.seen[index], self.counts[index])
