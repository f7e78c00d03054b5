"""A runner for any causal LM that transformers can load (GPT-NeoX/Pythia, Dolly, ...).

Each slot keeps its own Hugging Face cache and decode runs the slots one after
another: correct for every architecture, without the batched speed of the Llama
runner. The scheduler above it still batches at the request level, so requests
join and leave at any step.
"""

from __future__ import annotations

import copy

import torch

from wharf.engine.runners.base import Fill


class GenericRunner:
    def __init__(self, model, *, max_slots: int, max_len: int):
        self.model = model
        self.max_slots, self.max_len = max_slots, max_len
        self.vocab_size = model.config.vocab_size
        self._caches: dict[int, object] = {}

    @torch.inference_mode()
    def _forward(self, slot: int, token_ids: list[int], start: int) -> torch.Tensor:
        ids = torch.tensor([token_ids], dtype=torch.long)
        positions = torch.arange(start, start + len(token_ids)).unsqueeze(0)
        out = self.model(input_ids=ids, position_ids=positions,
                         past_key_values=self._caches.get(slot) if start else None, use_cache=True)
        self._caches[slot] = out.past_key_values
        return out.logits[0, -1].float()

    def step(self, slots: list[int], token_ids: list[int], positions: list[int],
             fills: list[Fill]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        fill_logits = []
        for f in fills:
            logits = self._forward(f.slot, f.token_ids, f.start)
            fill_logits.append(logits if f.logits else None)
        decode = (torch.stack([self._forward(s, [t], p) for s, t, p in zip(slots, token_ids, positions)])
                  if slots else None)
        return decode, fill_logits

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self._caches[dst] = copy.deepcopy(self._caches[src])

    def release(self, slot: int) -> None:
        self._caches.pop(slot, None)
