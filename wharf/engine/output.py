"""Sampled tokens -> the chunks a caller sees: incremental UTF-8 safe text, stop tokens
and strings (held back, never sent), max_tokens, the end of a grammar, logprobs with
token texts, and the finish reason. Runs in the model thread, one call per sampled token."""

from __future__ import annotations

from wharf.engine.sequence import Sequence
from wharf.engine.types import Chunk, FinishReason, TokenLogprob


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self._token_text: dict[int, str] = {}

    def advance(self, seq: Sequence, token: int, lp) -> None:
        """Append the sampled token; emit the text it completes (stop strings held back),
        its logprobs, and the finish when this token ends the choice."""
        group, params = seq.group, seq.row.params
        seq.token_ids.append(token)
        seq.pending_ids.append(token)
        if lp is not None:
            seq.pending_logprobs.append(TokenLogprob(
                token=self.text_of(token), token_id=token, logprob=lp[0],
                top=[(self.text_of(t), t, v) for t, v in lp[1]]))
        matcher = seq.row.matcher
        if matcher is not None:
            matcher.accept(token)
        ended = matcher is not None and matcher.done      # the grammar is complete: stop here
        text = ""
        is_eos = ((token in self.eos_ids and (not params.ignore_eos or ended))
                  or token in params.stop_token_ids)
        if is_eos:
            seq.finish = FinishReason.STOP
        else:
            text = seq.stops.feed(seq.detok.push(token))
            if seq.stops.stopped or ended:
                seq.finish = FinishReason.STOP
            elif seq.output_len >= group.max_tokens:
                seq.finish = FinishReason.LENGTH
        if seq.finish is FinishReason.LENGTH or ((is_eos or ended) and not seq.stops.stopped):
            text += seq.stops.feed(seq.detok.flush())
            text += seq.stops.flush()
        if text or seq.finish is not None:
            group.emit(Chunk(index=seq.index, text=text, token_ids=seq.pending_ids,
                             logprobs=seq.pending_logprobs if params.logprobs is not None else None,
                             finish_reason=seq.finish, prompt_tokens=group.prompt_len,
                             completion_tokens=seq.output_len))
            seq.pending_ids, seq.pending_logprobs = [], []

    def text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text
