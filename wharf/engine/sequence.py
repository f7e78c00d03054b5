"""A request in the engine (Group: its prompt, parameters and where its output goes) and
each of its n choices (Sequence: tokens so far, its KV slot, detokenizer and stops)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from wharf.engine.detokenize import IncrementalDetokenizer, StopMatcher
from wharf.engine.sampling import SamplerRow
from wharf.engine.types import FinishReason, SamplingParams, TokenLogprob

_arrivals = itertools.count()


@dataclass(eq=False)
class Sequence:
    group: "Group"
    index: int
    row: SamplerRow
    detok: IncrementalDetokenizer
    stops: StopMatcher
    token_ids: list[int]
    slot: int = -1
    kv: int = 0                    # positions of token_ids whose KV the slot holds
    filled: bool = False           # the slot was filled and its next token sampled from that
    finish: FinishReason | None = None
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def output_len(self) -> int:
        return len(self.token_ids) - self.group.prompt_len

    @property
    def decoding(self) -> bool:
        """Its slot holds the KV of every token but the last, which the next step feeds."""
        return self.finish is None and self.slot >= 0 and self.filled and self.kv == len(self.token_ids) - 1

    @property
    def needs_penalties(self) -> bool:
        p = self.row.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


@dataclass(eq=False)
class Group:
    """One request: n sequences that share the prompt."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    emit: Callable[[object], None]     # thread-safe; receives Chunk, WharfError, or None at the end
    deadline: float | None = None
    tenant: str = ""                   # fair share and prefix-cache namespace (opaque here)
    seqs: list[Sequence] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    cached: bool = False               # its prompt's blocks went to the prefix cache
    prompt_logits: torch.Tensor | None = None   # n > 1: the prompt's last logits, for every choice
    arrival: int = field(default_factory=lambda: next(_arrivals))

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def live(self) -> list[Sequence]:
        return [s for s in self.seqs if s.finish is None]

    @property
    def held(self) -> int:
        return sum(1 for s in self.seqs if s.slot >= 0)
