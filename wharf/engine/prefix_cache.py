"""Prompt-prefix KV cache: a repeated system prompt, few-shot preamble or the earlier
turns of a chat are prefilled once, then copied into the next request's slot.

The cache holds blocks of BLOCK positions, each keyed by a namespace (the tenant: one
account's prompts never warm another's, so hit timing or counters reveal nothing of
them, as vLLM's cache_salt) and the exact token ids from the start of the prompt to the
block's end (so a block is only ever reused after the very same prefix). A prompt's
lookup walks its blocks from the first while they are cached; a hit must leave at
least one prompt token to prefill, whose logits choose the first output token.
Eviction is least recently used, and a hit touches its blocks deepest first, so a chain
loses its tail before its head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 32


@dataclass
class PrefixStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    blocks: int = 0
    bytes: int = 0


class PrefixCache:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._blocks: OrderedDict[tuple, tuple[object, int]] = OrderedDict()  # key -> (kv, bytes)
        self.stats = PrefixStats()

    def lookup(self, namespace: str, prompt_ids: list[int]) -> list[object]:
        """The cached blocks that begin this prompt, in order (may be empty): block i
        holds positions [i * BLOCK, (i + 1) * BLOCK)."""
        keys = []
        end = BLOCK
        while end < len(prompt_ids):
            key = (namespace, *prompt_ids[:end])
            if key not in self._blocks:
                break
            keys.append(key)
            end += BLOCK
        for key in reversed(keys):
            self._blocks.move_to_end(key)
        if keys:
            self.stats.hits += 1
            self.stats.reused_tokens += len(keys) * BLOCK
        else:
            self.stats.misses += 1
        return [self._blocks[k][0] for k in keys]

    def store(self, namespace: str, prompt_ids: list[int],
              export: Callable[[int, int], tuple[object, int]]) -> None:
        """Keep every whole block of the prompt not yet cached; `export(start, end)` ->
        (kv, bytes) copies those positions out of the slot that just prefilled it."""
        for end in range(BLOCK, len(prompt_ids) + 1, BLOCK):
            key = (namespace, *prompt_ids[:end])
            if key in self._blocks:
                continue
            kv, size = export(end - BLOCK, end)
            self._blocks[key] = (kv, size)
            self.stats.bytes += size
        while self.stats.bytes > self.capacity_bytes and self._blocks:
            _, (_, size) = self._blocks.popitem(last=False)
            self.stats.bytes -= size
        self.stats.blocks = len(self._blocks)
