"""A batched runner for Llama-family models (Llama, Mistral, Qwen2, Yi, SmolLM) on plain tensors.

gpt-fast style: the weights are taken from the loaded Hugging Face model (q/k/v and
gate/up fused into one matmul each), and the KV cache is one tensor per layer indexed
by slot. A step is one flat batch of tokens: the decode rows (one token per slot) and
the fill chunks (prompt tokens) share every matmul; only attention differs by kind of
row. Decode attention is the kind this CPU runs fastest, measured at start
(decode_attention.py); HF's dynamic cache spends most of a decode step in cache `cat`s
and in SDPA for one query row (see bench/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wharf.engine.runners import decode_attention
from wharf.engine.runners.base import Fill
from wharf.engine.runners.int8 import smoothing
from wharf.engine.runners.linear import check, compute_dtype, make_linear

SUPPORTED = {"llama", "mistral", "qwen2"}


def supports(model) -> bool:
    cfg = model.config
    return (cfg.model_type in SUPPORTED and getattr(cfg, "hidden_act", "silu") == "silu"
            and hasattr(getattr(model, "model", None), "rotary_emb"))


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of K and V that one token of one sequence holds in the cache."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class _Layer:
    __slots__ = ("ln1", "ln2", "qkv", "wo", "gate_up", "down")


class LlamaRunner:
    def __init__(self, model, *, max_slots: int, max_len: int, quantize: str = "none",
                 act_ranges: dict[str, torch.Tensor] | None = None,
                 attention: decode_attention.Plan = decode_attention.DEFAULT):
        """quantize="int8" multiplies with int8 weights (int8.py), smoothed with
        `act_ranges` (int8.activation_ranges of this model); "int4" with the 4-bit
        groups of int4.py (a model loaded in float32), computing in bf16 where it can,
        and with the vocabulary projection in int8 (smoothed with `act_ranges` too).
        `attention`: how decode steps attend until `tune` measures this CPU."""
        cfg = model.config
        self.quantize = quantize
        self.max_slots, self.max_len = max_slots, max_len
        self.vocab_size = cfg.vocab_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.dtype = dtype = compute_dtype(quantize, next(model.parameters()).dtype)
        self.inter = cfg.intermediate_size
        self.attention = attention
        self.geometry = decode_attention.Geometry(self.n_kv, self.n_heads // self.n_kv, self.head_dim, dtype)

        inner = model.model
        self.embed = inner.embed_tokens.weight.detach().to(dtype)
        # With int8, `smooth(act, weight)` returns SmoothQuant factors s for a matmul's
        # input (see int8.py); without, ones, so the float path is untouched.
        int8 = check(quantize) == "int8"
        if quantize != "none" and act_ranges is None:
            raise ValueError(f"{quantize} quantization needs activation ranges (int8.activation_ranges)")

        def smooth(name: str, weight: torch.Tensor, on: bool = int8) -> torch.Tensor:
            return smoothing(act_ranges[name], weight) if on else torch.ones(weight.shape[1], dtype=weight.dtype)

        # int4 multiplies by the vocabulary in 8 bits, as the GGUF stores it (Q8_0, not 4
        # bits): a quarter of bf16's 57 MB a token, 3.0 -> 0.7 ms at one row, faster at
        # 128 rows too, and as close to a float32 projection's argmax as bf16 (bench/README.md).
        lm_head = model.lm_head.weight.detach()
        vocab_quantize = "int8" if quantize == "int4" else quantize
        s = smooth("lm_head", lm_head, on=vocab_quantize == "int8")
        self.norm = (inner.norm.weight.detach() / s).to(dtype)
        self.vocab_proj = make_linear(lm_head * s, quantize=vocab_quantize, dtype=dtype)
        self.layers = []
        for i, block in enumerate(inner.layers):
            attn, mlp, prefix = block.self_attn, block.mlp, f"model.layers.{i}."
            layer = _Layer()
            wqkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            bqkv = torch.cat(biases).detach() if all(b is not None for b in biases) else None
            s = smooth(prefix + "self_attn.q_proj", wqkv)
            layer.ln1 = (block.input_layernorm.weight.detach() / s).to(dtype)
            layer.qkv = make_linear((wqkv * s).contiguous(), bqkv, quantize, dtype)
            layer.wo = make_linear(attn.o_proj.weight.detach(), quantize=quantize, dtype=dtype)
            w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
            s = smooth(prefix + "mlp.gate_proj", w_gate_up)
            layer.ln2 = (block.post_attention_layernorm.weight.detach() / s).to(dtype)
            w_gate_up = w_gate_up * s
            # down's input is silu(gate) * up: its factors are folded into up's rows.
            w_down = mlp.down_proj.weight.detach()
            s = smooth(prefix + "mlp.down_proj", w_down)
            w_gate_up[self.inter:] /= s[:, None]
            layer.gate_up = make_linear(w_gate_up.contiguous(), quantize=quantize, dtype=dtype)
            layer.down = make_linear((w_down * s).contiguous(), quantize=quantize, dtype=dtype)
            self.layers.append(layer)

        # Rotary tables for every position, computed as HF does (float32, then scaled).
        rotary = inner.rotary_emb
        inv_freq = rotary.inv_freq.detach().float()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = (emb.cos() * scaling).to(self.dtype)
        # HF's rotate_half(x) * sin is roll(x, half) * sin with the first half's sin negated:
        # the same products bit for bit, in 4 ops instead of 7 (_rotate).
        sin = (emb.sin() * scaling).to(self.dtype)
        half = self.head_dim // 2
        self.signed_sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)

        # The cache grows in positions and in slots as sequences need them (doubling), so a
        # server that only sees a few short requests never pays for all slots or the whole
        # window; registry.build_engine bounds max_slots x max_len by the KV budget.
        self.capacity = self.slots_allocated = 0
        self.k_cache = self.v_cache = None
        self._ensure_capacity(min(256, max_len), min(8, max_slots))

    def _ensure_capacity(self, positions: int, slots: int = 0) -> None:
        if positions <= self.capacity and slots <= self.slots_allocated:
            return
        new_len = self.capacity if positions <= self.capacity else min(self.max_len, max(positions, 2 * self.capacity))
        new_slots = (self.slots_allocated if slots <= self.slots_allocated
                     else min(self.max_slots, max(slots, 2 * self.slots_allocated)))
        shape = (len(self.layers), new_slots, self.n_kv, new_len, self.head_dim)
        # Zeros, not empty: masked positions get probability 0, and 0 * garbage NaN is NaN.
        k, v = torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)
        if self.capacity:
            k[:, :self.slots_allocated, :, :self.capacity] = self.k_cache
            v[:, :self.slots_allocated, :, :self.capacity] = self.v_cache
        self.k_cache, self.v_cache = k, v
        self.capacity, self.slots_allocated = new_len, new_slots

    # -- building blocks -------------------------------------------------------------
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """RMSNorm in one call, 61 calls a step (15 vs 22-25 us at one row). float32: HF's
        LlamaRMSNorm bit for bit; bf16: normalised in float32 and scaled before the one
        rounding, where HF rounds before scaling (at most a unit in the last place apart)."""
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """HF's apply_rotary_pos_emb for the last dimension: x * cos + rotate_half(x) * sin."""
        return torch.mul(x, cos).add_(x.roll(x.shape[-1] // 2, -1).mul_(signed_sin))

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.ln2)
        gate, up = layer.gate_up(h).split(self.inter, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> [rows, vocab] float32 logits."""
        return self.vocab_proj(self._rms(x, self.norm)).float()

    # -- runner interface ---------------------------------------------------------------
    @torch.inference_mode()
    def step(self, slots: list[int], token_ids: list[int], positions: list[int],
             fills: list[Fill]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """Decode rows and fill chunks as one flat batch of tokens: every matmul reads the
        weights once for all of them (a fill beside the decodes costs its FLOPs, not a
        second pass over the weights), and only attention is per kind of row."""
        b = len(slots)
        ids, pos, owner = list(token_ids), list(positions), list(slots)
        chunks = []                                     # (row offset, length, slot, start)
        for f in fills:
            chunks.append((len(ids), len(f.token_ids), f.slot, f.start))
            ids += f.token_ids
            pos += range(f.start, f.start + len(f.token_ids))
            owner += [f.slot] * len(f.token_ids)
        self._ensure_capacity(max(pos) + 1, max(owner) + 1)
        pos_t, owner_t = torch.tensor(pos, dtype=torch.long), torch.tensor(owner, dtype=torch.long)
        x = F.embedding(torch.tensor(ids, dtype=torch.long), self.embed)     # [T, hidden]
        cos, sin = self.cos[pos_t][:, None], self.signed_sin[pos_t][:, None]  # [T, 1, D]
        decode_attn = self._decode_attention(slots, positions) if b else None
        fill_masks = [None if start == 0 else
                      torch.arange(start + n).unsqueeze(0) <= torch.arange(start, start + n).unsqueeze(1)
                      for _, n, _, start in chunks]
        h_q, h_kv = self.n_heads, self.n_kv
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(self._rms(x, layer.ln1))
            qk = self._rotate(qkv[:, :(h_q + h_kv) * self.head_dim].view(-1, h_q + h_kv, self.head_dim), cos, sin)
            q, k = qk[:, :h_q], qk[:, h_q:]
            v = qkv[:, (h_q + h_kv) * self.head_dim:].view(-1, h_kv, self.head_dim)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            k_cache[owner_t, :, pos_t] = k
            v_cache[owner_t, :, pos_t] = v
            parts = [decode_attn(q[:b], k_cache, v_cache)] if b else []
            for (off, n, slot, start), mask in zip(chunks, fill_masks):
                qf = q[off:off + n].transpose(0, 1).unsqueeze(0)                # [1, H, n, D]
                keys = k_cache[slot:slot + 1, :, :start + n]
                values = v_cache[slot:slot + 1, :, :start + n]
                o = F.scaled_dot_product_attention(qf, keys, values, attn_mask=mask, is_causal=mask is None,
                                                   enable_gqa=True)
                parts.append(o[0].transpose(0, 1).reshape(n, -1))
            x = x + layer.wo(parts[0] if len(parts) == 1 else torch.cat(parts))
            x = self._mlp(layer, x)
        wanted = list(range(b)) + [off + n - 1 for (off, n, _, _), f in zip(chunks, fills) if f.logits]
        logits = self._logits(x[wanted]) if wanted else None
        decode_logits = logits[:b] if b else None
        fill_logits, row = [], b
        for f in fills:
            fill_logits.append(logits[row] if f.logits else None)
            row += f.logits
        return decode_logits, fill_logits

    def _decode_attention(self, slots: list[int], positions: list[int]) -> decode_attention.Attend:
        """Attention of one new token per slot over that slot's cache, the kind this CPU
        runs fastest for this many slots (decode_attention.py)."""
        kind = self.attention.pick(slots, positions, self.capacity)
        return decode_attention.build(kind, self.geometry, slots, positions, self.capacity)

    def tune(self) -> str:
        """Measure the decode attention kinds on this CPU; on the model thread, before the
        first step (its torch threads are the ones the steps use). Returns what it chose."""
        self.attention = decode_attention.measure(self.geometry, torch.get_num_threads())
        return self.attention.describe()

    def prefill(self, slot: int, token_ids: list[int], start: int) -> torch.Tensor:
        """Logits [V] of the last of `token_ids`, run at positions start.. of `slot`."""
        return self.step([], [], [], [Fill(slot, token_ids, start)])[1][0]

    def decode(self, slots: list[int], token_ids: list[int], positions: list[int]) -> torch.Tensor:
        return self.step(slots, token_ids, positions, [])[0]

    @torch.inference_mode()   # the cache may have been (re)allocated in inference mode
    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self._ensure_capacity(length, max(src, dst) + 1)
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]

    @torch.inference_mode()   # the cache may have been (re)allocated in inference mode
    def export_prefix(self, slot: int, start: int, end: int) -> tuple[object, int]:
        """A copy of the slot's cache positions [start, end), and its size in bytes."""
        k = self.k_cache[:, slot, :, start:end].clone()
        v = self.v_cache[:, slot, :, start:end].clone()
        return (k, v), 2 * k.numel() * k.element_size()

    @torch.inference_mode()   # the cache may have been (re)allocated in inference mode
    def import_prefix(self, slot: int, blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Put exported blocks, in order from position 0, into a slot; returns their length."""
        length = sum(k.shape[2] for k, _ in blocks)
        self._ensure_capacity(length, slot + 1)
        start = 0
        for k, v in blocks:
            end = start + k.shape[2]
            self.k_cache[:, slot, :, start:end] = k
            self.v_cache[:, slot, :, start:end] = v
            start = end
        return length

    def release(self, slot: int) -> None:
        pass  # stale cache entries are masked by position; nothing to free
