"""Incremental detokenization that never splits a character, and stop strings with holdback."""

from __future__ import annotations

REPLACEMENT = "\ufffd"
_CONTEXT_TOKENS = 5  # prompt tokens kept as left context so the first word decodes right


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas of whole characters.

    Byte-level BPE can spread one character (Chinese, emoji) over several tokens;
    while the decoded tail is an incomplete UTF-8 sequence (U+FFFD), it is held
    until the next token completes it. This is the offset scheme of TGI and vLLM.
    """

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held at the end, minus a trailing incomplete character."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):].rstrip(REPLACEMENT) if len(full) > len(prefix) else ""


class StopMatcher:
    """Cuts the output at the first stop string and never emits any part of one.

    A tail of the text that could still grow into a stop string is held back until
    the next delta decides it.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        # A stop can only start at or after `emitted`: any earlier start would have
        # been a held-back prefix.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.emitted:cut]
            self.text = self.text[:cut]
            self.emitted = cut
            self.stopped = True
            return out
        hold = self._held_tail()
        end = len(self.text) - hold
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_tail(self) -> int:
        """Length of the longest suffix of the unemitted text that begins some stop string."""
        pending = self.text[self.emitted:]
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(pending)), best, -1):
                if pending.endswith(stop[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
