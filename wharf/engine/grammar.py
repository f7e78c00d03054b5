"""Structured output: a grammar per request, a token mask per sequence and step.

This module owns the grammar library (xgrammar). Measured on this CPU for a nested JSON
schema over SmolLM2's 49,152-token vocabulary, one thread: xgrammar filled a token
bitmask in ~4 us a token, llguidance in ~18 us (bench/README.md, "Structured output").
Applying a mask to a row of logits costs ~0.1 ms with xgrammar's CPU kernel.

A request's constraint compiles once per distinct constraint (an LRU cache per model)
and off the event loop (the pipeline prepares constrained requests in a worker thread);
each of its n sequences then gets a matcher of its own, which the sampler asks for a
mask before sampling and which advances on every token the sequence accepts.
"""

from __future__ import annotations

import functools
import json
import re
import threading

import torch
import xgrammar as xgr

from wharf.engine.types import StructuredOutput
from wharf.errors import InvalidParam

# Compiled grammars kept per model: a compiled JSON schema is small (tens of KB), and
# clients reuse a handful of schemas over and over.
CACHE_SIZE = 256

# xgrammar's errors start with "[17:05:08] /project/cpp/json_schema_converter.cc:4944: ".
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


class Grammars:
    """The compiler for one model's vocabulary, and its cache of compiled constraints."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int]):
        self._tokenizer, self._vocab_size, self._stop_ids = tokenizer, vocab_size, sorted(stop_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._lock = threading.Lock()
        self._compile_cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._compile)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar for `spec` (cached); InvalidParam naming spec.param when the
        library refuses it. Blocking (ms for a new schema): call it off the event loop."""
        try:
            # Keyed by the schema's text as given: its properties' order is the output's.
            return self._compile_cached(json.dumps(spec.json_schema))
        except RuntimeError as exc:
            message = _LOCATION.sub("", str(exc).strip()).splitlines()[0]
            raise InvalidParam(f"Invalid JSON schema in {spec.param}: {message}", param=spec.param) from None

    def _compile(self, schema: str) -> xgr.CompiledGrammar:
        # No free whitespace: small models given the choice pad JSON with newlines until
        # max_tokens (vLLM turns it off for the same reason).
        return self._get_compiler().compile_json_schema(schema, any_whitespace=False)

    def _get_compiler(self) -> xgr.GrammarCompiler:
        with self._lock:       # the vocabulary's tables take ~0.2 s: built once, on first use
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                          stop_token_ids=self._stop_ids)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler


class Matcher:
    """One sequence's place in its grammar."""

    __slots__ = ("_m",)

    def __init__(self, grammar: xgr.CompiledGrammar):
        # The sequence ends where the grammar does: no need to wait for the model's EOS.
        self._m = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)

    def accept(self, token: int) -> None:
        """Advance on a sampled token; a token outside the mask is a bug, not bad input."""
        if not self._m.accept_token(token):
            raise RuntimeError(f"token {token} was sampled outside the grammar")

    @property
    def done(self) -> bool:
        return self._m.is_terminated()

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)


def mask_logits(logits: torch.Tensor, rows: list[int], matchers: list[Matcher]) -> None:
    """Set to -inf, in place, every logit that row `rows[i]`'s grammar forbids. Only the
    constrained rows are filled and masked; the others are not touched."""
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[1])
    for row, matcher in zip(rows, matchers):
        matcher.fill(bitmask, row)
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1], indices=rows)

