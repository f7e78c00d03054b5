"""What the scheduler needs from a model runner: slot-addressed KV cache, prefill, decode."""

from __future__ import annotations

from typing import Protocol

import torch


class ModelRunner(Protocol):
    max_slots: int
    max_len: int
    vocab_size: int

    def prefill(self, slot: int, token_ids: list[int], start: int) -> torch.Tensor:
        """Run tokens at positions start.. of `slot`; return float32 logits of the last one [V]."""

    def decode(self, slots: list[int], token_ids: list[int], positions: list[int]) -> torch.Tensor:
        """One token per slot at its position; return float32 logits [len(slots), V]."""

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Make dst's first `length` cache positions equal to src's (prefix sharing for n > 1)."""

    def release(self, slot: int) -> None:
        """The slot's sequence is gone."""

    # Optional (prefix caching, wharf/engine/prefix_cache.py): a runner that has
    # export_prefix(slot, start, end) -> (kv, bytes) and import_prefix(slot, blocks) -> length
    # gets repeated prompt prefixes prefilled once.
