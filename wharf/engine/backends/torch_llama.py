"""A batched runner for Llama-family models (Llama, Mistral, Qwen2, Yi, SmolLM) on plain tensors.

gpt-fast style: the weights are taken from the loaded Hugging Face model (q/k/v and
gate/up fused into one matmul each), the KV cache is one preallocated tensor per
layer indexed by slot, and decode attention is a batched matmul over each slot's
valid prefix. On this CPU the default dynamic cache + SDPA spends most of a decode
step in a flash kernel that is poor for one query token and in cache `cat`s; this
avoids both (see bench/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wharf.engine.backends.int8 import check, make_linear, smoothing

SUPPORTED = {"llama", "mistral", "qwen2"}


def supports(model) -> bool:
    cfg = model.config
    return (cfg.model_type in SUPPORTED and getattr(cfg, "hidden_act", "silu") == "silu"
            and hasattr(getattr(model, "model", None), "rotary_emb"))


class _Layer:
    __slots__ = ("ln1", "ln2", "qkv", "wo", "gate_up", "down")


class LlamaRunner:
    def __init__(self, model, *, max_slots: int, max_len: int, quantize: str = "none",
                 act_ranges: dict[str, torch.Tensor] | None = None):
        """quantize="int8" multiplies with int8 weights (int8.py), smoothed with
        `act_ranges` (int8.activation_ranges of this model)."""
        cfg = model.config
        self.quantize = quantize
        self.max_slots, self.max_len = max_slots, max_len
        self.vocab_size = cfg.vocab_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.group = self.n_heads // self.n_kv
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        self.dtype = next(model.parameters()).dtype
        self.inter = cfg.intermediate_size

        inner = model.model
        self.embed = inner.embed_tokens.weight.detach()
        # With int8, `smooth(act, weight)` returns SmoothQuant factors s for a matmul's
        # input (see int8.py); without, ones, so the float path is untouched.
        int8 = check(quantize) == "int8"
        if int8 and act_ranges is None:
            raise ValueError("int8 quantization needs activation ranges (int8.activation_ranges)")

        def smooth(name: str, weight: torch.Tensor) -> torch.Tensor:
            return smoothing(act_ranges[name], weight) if int8 else torch.ones(weight.shape[1], dtype=weight.dtype)

        self.lm_head = model.lm_head.weight.detach()
        s = smooth("lm_head", self.lm_head)
        self.norm = inner.norm.weight.detach() / s
        self.vocab_proj = make_linear(self.lm_head * s, quantize=quantize) if int8 else None
        self.layers = []
        for i, block in enumerate(inner.layers):
            attn, mlp, prefix = block.self_attn, block.mlp, f"model.layers.{i}."
            layer = _Layer()
            wqkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            bqkv = torch.cat(biases).detach() if all(b is not None for b in biases) else None
            s = smooth(prefix + "self_attn.q_proj", wqkv)
            layer.ln1 = block.input_layernorm.weight.detach() / s
            layer.qkv = make_linear((wqkv * s).contiguous(), bqkv, quantize)
            layer.wo = make_linear(attn.o_proj.weight.detach(), quantize=quantize)
            w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
            s = smooth(prefix + "mlp.gate_proj", w_gate_up)
            layer.ln2 = block.post_attention_layernorm.weight.detach() / s
            w_gate_up = w_gate_up * s
            # down's input is silu(gate) * up: its factors are folded into up's rows.
            w_down = mlp.down_proj.weight.detach()
            s = smooth(prefix + "mlp.down_proj", w_down)
            w_gate_up[self.inter:] /= s[:, None]
            layer.gate_up = make_linear(w_gate_up.contiguous(), quantize=quantize)
            layer.down = make_linear((w_down * s).contiguous(), quantize=quantize)
            self.layers.append(layer)

        # Rotary tables for every position, computed as HF does (float32, then scaled).
        rotary = inner.rotary_emb
        inv_freq = rotary.inv_freq.detach().float()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = (emb.cos() * scaling).to(self.dtype)
        self.sin = (emb.sin() * scaling).to(self.dtype)

        # The cache grows in positions as sequences need them (doubling), so a server
        # that only sees short requests never pays for the whole window.
        self.capacity = 0
        self.k_cache = self.v_cache = None
        self._ensure_capacity(min(256, max_len))

    def _ensure_capacity(self, positions: int) -> None:
        if positions <= self.capacity:
            return
        new = min(self.max_len, max(positions, 2 * self.capacity))
        shape = (len(self.layers), self.max_slots, self.n_kv, new, self.head_dim)
        # Zeros, not empty: masked positions get probability 0, and 0 * garbage NaN is NaN.
        k, v = torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)
        if self.capacity:
            k[:, :, :, :self.capacity] = self.k_cache
            v[:, :, :, :self.capacity] = self.v_cache
        self.k_cache, self.v_cache, self.capacity = k, v, new

    # -- building blocks -------------------------------------------------------------
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer: _Layer, h: torch.Tensor):
        qkv = layer.qkv(h)
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        return qkv.split([q_size, kv_size, kv_size], dim=-1)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.ln2)
        gate, up = layer.gate_up(h).split(self.inter, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> [rows, vocab] float32 logits."""
        h = self._rms(x, self.norm)
        if self.vocab_proj is not None:
            return self.vocab_proj(h).float()
        if h.shape[0] > 1:
            # The vocabulary projection is the largest matmul of a decode step; for a few
            # rows MKL runs W @ h.T about twice as fast as h @ W.T on this CPU
            # (49152x576, batch 8: 13 vs 26 ms).
            return torch.mm(self.lm_head, h.t()).t().float()
        return F.linear(h, self.lm_head).float()

    # -- runner interface ---------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int], start: int) -> torch.Tensor:
        n = len(token_ids)
        end = start + n
        self._ensure_capacity(end)
        ids = torch.tensor(token_ids, dtype=torch.long)
        x = F.embedding(ids, self.embed).unsqueeze(0)                       # [1, n, hidden]
        cos, sin = self.cos[start:end][None, None], self.sin[start:end][None, None]
        mask = None
        if start:
            q_pos = torch.arange(start, end).unsqueeze(1)
            mask = torch.arange(end).unsqueeze(0) <= q_pos                   # [n, end]
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            q, k, v = self._qkv(layer, h)
            q = q.view(1, n, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
            v = v.view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            self.k_cache[i, slot, :, start:end] = k[0]
            self.v_cache[i, slot, :, start:end] = v[0]
            keys = self.k_cache[i, slot:slot + 1, :, :end]
            values = self.v_cache[i, slot:slot + 1, :, :end]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 is_causal=mask is None, enable_gqa=True)
            x = x + layer.wo(out.transpose(1, 2).reshape(1, n, -1))
            x = self._mlp(layer, x)
        return self._logits(x[0, -1:])[0]

    @torch.inference_mode()
    def decode(self, slots: list[int], token_ids: list[int], positions: list[int]) -> torch.Tensor:
        b = len(slots)
        slot_idx = torch.tensor(slots, dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        span = max(positions) + 1
        self._ensure_capacity(span)
        # Slots in use are kept contiguous by the scheduler when it can, so the cache
        # read below is a view; otherwise index_select copies.
        contiguous = slots == list(range(slots[0], slots[0] + b))
        x = F.embedding(torch.tensor(token_ids, dtype=torch.long), self.embed)   # [b, hidden]
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]                # [b, 1, D]
        invalid = (torch.arange(span).unsqueeze(0) > pos.unsqueeze(1))[:, None, None, :]  # [b,1,1,span]
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            q, k, v = self._qkv(layer, h)
            q = self._rotate(q.view(b, self.n_heads, self.head_dim), cos, sin)
            k = self._rotate(k.view(b, self.n_kv, self.head_dim), cos, sin)
            self.k_cache[i][slot_idx, :, pos] = k
            self.v_cache[i][slot_idx, :, pos] = v.view(b, self.n_kv, self.head_dim)
            if contiguous:
                keys = self.k_cache[i, slots[0]:slots[0] + b, :, :span]
                values = self.v_cache[i, slots[0]:slots[0] + b, :, :span]
            else:
                keys = self.k_cache[i, slot_idx, :, :span]
                values = self.v_cache[i, slot_idx, :, :span]
            qg = q.view(b, self.n_kv, self.group, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * self.scale  # [b,kv,g,span]
            scores.masked_fill_(invalid, float("-inf"))
            probs = torch.softmax(scores, dim=-1).to(self.dtype)
            out = torch.matmul(probs, values).reshape(b, self.n_heads * self.head_dim)
            x = x + layer.wo(out)
            x = self._mlp(layer, x)
        return self._logits(x)

    @torch.inference_mode()   # the cache may have been (re)allocated in inference mode
    def copy_slot(self, src: int, dst: int, length: int) -> None:
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
        self._ensure_capacity(length)
        start = 0
        for k, v in blocks:
            end = start + k.shape[2]
            self.k_cache[:, slot, :, start:end] = k
            self.v_cache[:, slot, :, start:end] = v
            start = end
        return length

    def release(self, slot: int) -> None:
        pass  # stale cache entries are masked by position; nothing to free
