"""What the scheduler needs from a model runner: slot-addressed KV cache and one forward
step that decodes some slots and fills others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Fill:
    """Prompt (or recomputed) tokens at positions start.. of `slot`."""

    slot: int
    token_ids: list[int]
    start: int
    logits: bool = True          # the last token's logits are wanted (the fill completes)


class ModelRunner(Protocol):
    max_slots: int
    max_len: int
    vocab_size: int

    def step(self, slots: list[int], token_ids: list[int], positions: list[int],
             fills: list[Fill]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """One token per decode slot at its position, and every fill's tokens, in one pass.
        Returns float32 decode logits [len(slots), V] (None without decode slots) and, per
        fill, its last token's logits [V] (None where not wanted)."""

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Make dst's first `length` cache positions equal to src's (prefix sharing for n > 1)."""

    def release(self, slot: int) -> None:
        """The slot's sequence is gone."""

    # Optional: tune() -> str, called once on the model thread before the first step, measures
    # this CPU (decode_attention.measure) and says what it chose.
    # Optional (prefix caching, wharf/engine/prefix_cache.py): a runner that has
    # export_prefix(slot, start, end) -> (kv, bytes) and import_prefix(slot, blocks) -> length
    # gets repeated prompt prefixes prefilled once.
