"""Per-request sampling for a whole batch at once, on tensors.

Every row of the batch carries its own temperature, top-k, top-p, penalties and
seed. Work that no row asks for (penalties, sorting for top-p, log-softmax for
logprobs) is skipped for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wharf.engine.types import SamplingParams


@dataclass
class SamplerRow:
    params: SamplingParams
    generator: torch.Generator | None   # seeded rows draw from their own generator


@dataclass
class SampleResult:
    tokens: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]  # per row: (chosen lp, top k)


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def apply_penalties(logits: torch.Tensor, rows: list[SamplerRow],
                    seen: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """seen [B, V] bool: token in prompt or output; counts [B, V]: times generated."""
    rep = [r.params.repetition_penalty for r in rows]
    if any(p != 1.0 for p in rep):
        penalty = torch.tensor(rep, dtype=logits.dtype).unsqueeze(1)
        # HF semantics: shrink seen tokens' logits toward zero from either side.
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalised, logits)
    pres = [r.params.presence_penalty for r in rows]
    freq = [r.params.frequency_penalty for r in rows]
    if any(pres) or any(freq):
        c = counts.to(logits.dtype)
        logits = (logits - torch.tensor(freq, dtype=logits.dtype).unsqueeze(1) * c
                  - torch.tensor(pres, dtype=logits.dtype).unsqueeze(1) * (c > 0).to(logits.dtype))
    return logits


def _filter_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]):
    """Return (candidate logits [B, K], candidate token ids [B, K]) after top-k and top-p."""
    vocab = logits.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    kmax = max(ks)
    if kmax < vocab:
        values, ids = torch.topk(logits, kmax, dim=-1)
    else:
        values, ids = torch.sort(logits, dim=-1, descending=True)
    if min(ks) < kmax:
        rank = torch.arange(values.shape[-1]).unsqueeze(0)
        values = values.masked_fill(rank >= torch.tensor(ks).unsqueeze(1), float("-inf"))
    if any(p < 1.0 for p in top_p):
        probs = torch.softmax(values, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs   # mass strictly above each candidate
        p = torch.tensor(top_p, dtype=probs.dtype).unsqueeze(1)
        drop = before >= p
        drop[:, 0] = False                               # always keep the best one
        values = values.masked_fill(drop, float("-inf"))
    return values, ids


def sample(logits: torch.Tensor, rows: list[SamplerRow]) -> SampleResult:
    """logits: float32 [B, V] after penalties. Returns one token per row."""
    b = logits.shape[0]
    tokens = [0] * b
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if greedy:
        idx = torch.tensor(greedy)
        for i, t in zip(greedy, logits[idx].argmax(dim=-1).tolist()):
            tokens[i] = t
    if sampled:
        idx = torch.tensor(sampled)
        sub = logits[idx]
        temps = torch.tensor([rows[i].params.temperature for i in sampled], dtype=sub.dtype).unsqueeze(1)
        sub = sub / temps
        values, ids = _filter_top_k_top_p(sub, [rows[i].params.top_k for i in sampled],
                                          [rows[i].params.top_p for i in sampled])
        probs = torch.softmax(values, dim=-1)
        unseeded = [j for j, i in enumerate(sampled) if rows[i].generator is None]
        picks = [0] * len(sampled)
        if unseeded:
            sel = torch.tensor(unseeded)
            for j, c in zip(unseeded, torch.multinomial(probs[sel], 1).squeeze(1).tolist()):
                picks[j] = c
        for j, i in enumerate(sampled):
            if rows[i].generator is not None:
                picks[j] = int(torch.multinomial(probs[j], 1, generator=rows[i].generator))
        chosen = ids[torch.arange(len(sampled)), torch.tensor(picks)].tolist()
        for i, t in zip(sampled, chosen):
            tokens[i] = t

    logprobs: list = [None] * b
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if want:
        idx = torch.tensor(want)
        lp = torch.log_softmax(logits[idx], dim=-1)   # the model's distribution, before temperature
        kmax = max(rows[i].params.logprobs for i in want)
        top_v, top_i = (torch.topk(lp, kmax, dim=-1) if kmax else (None, None))
        chosen_lp = lp[torch.arange(len(want)), torch.tensor([tokens[i] for i in want])].tolist()
        for j, i in enumerate(want):
            k = rows[i].params.logprobs
            top = list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist())) if k else []
            logprobs[i] = (chosen_lp[j], top)
    return SampleResult(tokens=tokens, logprobs=logprobs)
