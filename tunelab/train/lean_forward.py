"""A lean training forward for LoRA fine-tunes of Llama-architecture models (SmolLM2 is one).

transformers' forward with PEFT's LoRA layers runs each of a layer's seven projections as its own base product
plus two LoRA products, and many small tensor operations around them; on a CPU their count, more than their
arithmetic, sets the pace. This forward computes the same function with fewer, larger operations: q, k and v come
from one fused base product (gate and up from another), the LoRA A matrices of a fused projection are applied in
one product and its B matrices, block-diagonal, in another, and rotary embeddings go to q and k together. The
conversations of a batch can be packed into one call, so every projection runs once per batch, not per sample.

The trainable parameters stay PEFT's own (`lora_A` / `lora_B` of each projection, read on every forward), so
the optimizer, checkpoints and the saved adapter are exactly what they are with PEFT's forward. The frozen base
weights are fused once, in bf16 or fp32 as the run's `matmul_precision` says. The tests compare losses and
gradients with transformers + PEFT.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..models.llama_block import PROJECTIONS, base_linear, unsupported


def lean_forward(model, precision: str):
    """A `LeanForward` for a PEFT LoRA model of a Llama-architecture model, or None when it does not apply."""
    if not hasattr(model, "peft_config") or unsupported(model) is not None:
        return None
    config = next(iter(model.peft_config.values()))
    if getattr(config, "use_dora", False) or getattr(config, "lora_dropout", 0) or config.modules_to_save:
        return None
    return LeanForward(model, precision)


class LeanForward:
    def __init__(self, model, precision: str):
        inner = model.get_base_model().model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.adapter = model.active_adapter
        self.embed, self.rotary = inner.embed_tokens, inner.rotary_emb
        self.norm = (inner.norm.weight.detach(), inner.norm.variance_epsilon)
        self.layers = []
        for layer in inner.layers:
            fused = {}
            for key, (parent, names) in PROJECTIONS.items():
                modules = [getattr(getattr(layer, parent), name) for name in names]
                weight = torch.cat([base_linear(m).weight.detach() for m in modules]).to(self.dtype)
                bias = [base_linear(m).bias for m in modules]
                fused[key] = (weight, torch.cat(bias).detach().to(self.dtype) if bias[0] is not None else None,
                              modules)
            norms = [(n.weight.detach(), n.variance_epsilon) for n in (layer.input_layernorm,
                                                                         layer.post_attention_layernorm)]
            self.layers.append((*norms, fused))
        half = self.head_dim // 2
        self.rotation_sign = torch.cat([-torch.ones(half), torch.ones(half)])

    def __call__(self, ids: torch.Tensor, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 keep_kv: bool = False, lengths: list[int] | None = None):
        """Hidden states (after the final norm) [T, hidden] for `ids` [T], continuing after the `prefix` keys and
        values (one (k, v) per layer, [1, kv_heads, P, head_dim]); with `keep_kv`, also this call's own keys and
        values per layer (what a shared prefix hands to the conversations after it).

        `lengths` packs several conversations into `ids`, one after the other: each continues after the prefix
        on its own (its positions start where the prefix ends; it attends to the prefix and to itself only).
        The projections then run once over all their tokens, which on a CPU is the faster way to do the same
        arithmetic; attention runs per conversation, so no FLOPs go to pairs that never see each other."""
        start = prefix[0][0].shape[2] if prefix else 0
        lengths = lengths or [ids.shape[0]]
        total = ids.shape[0]
        x = self.embed(ids[None])
        positions = torch.cat([torch.arange(start, start + n, device=ids.device) for n in lengths])[None]
        cos, sin = self.rotary(x, positions)
        cos, sin = cos[:, :, None], (sin * self.rotation_sign.to(sin))[:, :, None]
        # each new token sees the prefix and its own conversation up to itself
        masks = [torch.arange(start + n, device=ids.device)[None, :]
                 <= torch.arange(start, start + n, device=ids.device)[:, None] if start else None for n in lengths]
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        kept = []
        for i, (norm1, norm2, fused) in enumerate(self.layers):
            qkv = self._project(fused["qkv"], self._norm(x, norm1))
            qk = qkv[..., :(heads + kv) * dim].view(1, total, heads + kv, dim)
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, -1), sin)  # rotary: x·cos + rotate_half(x)·sin
            q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
            v = qkv[..., (heads + kv) * dim:].view(1, total, kv, dim).transpose(1, 2)
            if keep_kv:
                kept.append((k, v))
            parts = []
            for q_, k_, v_, mask in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), masks):
                if prefix:
                    k_, v_ = torch.cat([prefix[i][0], k_], dim=2), torch.cat([prefix[i][1], v_], dim=2)
                parts.append(F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, is_causal=mask is None,
                                                            enable_gqa=kv != heads))
            attention = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
            x = x + self._project(fused["o"], attention.transpose(1, 2).reshape(1, total, heads * dim))
            gate, up = self._project(fused["gate_up"], self._norm(x, norm2)).chunk(2, dim=-1)
            x = x + self._project(fused["down"], F.silu(gate) * up)
        hidden = self._norm(x, self.norm)[0]
        return (hidden, kept) if keep_kv else hidden

    def _norm(self, x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
        return F.rms_norm(x, (self.hidden,), norm[0], norm[1])

    def _project(self, fused, x: torch.Tensor) -> torch.Tensor:
        """The fused base product (in the run's precision) plus the fused LoRA update (fp32)."""
        weight, bias, modules = fused
        y = F.linear(x.to(self.dtype), weight, bias).to(x.dtype)
        name = self.adapter
        downs = [m.lora_A[name].weight for m in modules]
        ups = [m.lora_B[name].weight * m.scaling[name] for m in modules]
        down = downs[0] if len(downs) == 1 else torch.cat(downs)
        up = ups[0] if len(ups) == 1 else torch.block_diag(*ups)
        return y + F.linear(F.linear(x, down), up)
