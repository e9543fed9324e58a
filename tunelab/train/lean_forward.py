"""A lean training forward for LoRA fine-tunes of Llama-architecture models (SmolLM2 is one).

transformers' forward with PEFT's LoRA layers runs each of a layer's seven projections as its own base product
plus two LoRA products, and many small tensor operations around them; on a CPU their count, more than their
arithmetic, sets the pace. This forward computes the same function with fewer, larger operations: q, k and v come
from one fused base product (gate and up from another), the LoRA A matrices of a fused projection are applied in
one product and its B matrices, block-diagonal, in another, and rotary embeddings go to q and k together. The
conversations of a batch can be packed into one call, so every projection runs once per batch, not per sample.

The trainable parameters stay PEFT's own (`lora_A` / `lora_B` of each projection, read on every forward), so
the optimizer, checkpoints and the saved adapter are exactly what they are with PEFT's forward. The frozen base
weights are fused once, in bf16 or fp32 as the run's `matmul_precision` says, and exist once: each PEFT base
layer's weight (and bias) becomes a view of its rows of the fused matrix, so transformers' forward, wherever it
still runs, reads the same memory (a second copy would cost a model's weights: +0.5 GB for SmolLM2 in fp32). The
tests compare losses and gradients with transformers + PEFT.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.llama_block import (PROJECTIONS, Dims, base_linear, fused_lora, fused_weight, layer_norms,
                                  projection_modules, rms_norm, rotary_tables, run_layers, unsupported)
from .precision import Bf16Linear


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
        self.dims = Dims.of(model.config)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.adapter = model.active_adapter
        # per layer, key -> (fused base weight and bias in the run's precision, the PEFT modules they come from)
        self.layers = []
        for layer in inner.layers:
            fused = {}
            for key in PROJECTIONS:
                modules = projection_modules(layer, key)
                weight, bias = fused_weight(modules)
                weight, bias = weight.to(self.dtype), None if bias is None else bias.to(self.dtype)
                share_fused(modules, weight, bias)
                fused[key] = (weight, bias, modules)
            self.layers.append(fused)
        release_file_mapping(model, [t for layer in self.layers for w, b, _ in layer.values() for t in (w, b)])
        self.embed, self.rotary = inner.embed_tokens, inner.rotary_emb
        self.norm = (inner.norm.weight.detach(), inner.norm.variance_epsilon)
        self.norms = [layer_norms(layer) for layer in inner.layers]

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
        x = self.embed(ids[None])
        positions = torch.cat([torch.arange(start, start + n, device=ids.device) for n in lengths])[None]
        cos, sin = rotary_tables(self.rotary, x, positions)
        # each new token sees the prefix and its own conversation up to itself
        masks = [torch.arange(start + n, device=ids.device)[None, :]
                 <= torch.arange(start, start + n, device=ids.device)[:, None] if start else None for n in lengths]
        gqa = self.dims.kv_heads != self.dims.heads
        kept = []

        def attend(i, q, k, v):  # per conversation, after the prefix: autograd flows into the prefix's leaves
            if keep_kv:
                kept.append((k, v))
            parts = []
            for q_, k_, v_, mask in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), masks):
                if prefix:
                    k_, v_ = torch.cat([prefix[i][0], k_], dim=2), torch.cat([prefix[i][1], v_], dim=2)
                parts.append(F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, is_causal=mask is None,
                                                            enable_gqa=gqa))
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

        hidden = rms_norm(run_layers(x, self.norms, self.dims, cos, sin, self._project, attend), self.norm)[0]
        return (hidden, kept) if keep_kv else hidden

    def _project(self, i: int, key: str, x: torch.Tensor) -> torch.Tensor:
        """The fused base product (in the run's precision) plus the fused LoRA update (fp32), computed from PEFT's
        parameters on every call so that autograd reaches them (the decoder's are fixed and per row)."""
        weight, bias, modules = self.layers[i][key]
        y = F.linear(x.to(self.dtype), weight, bias).to(x.dtype)
        down, up = fused_lora(modules, self.adapter)
        return y + F.linear(F.linear(x, down), up)


def share_fused(modules, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Make each of `modules`' base weights (and biases) a view of its rows of the fused `weight` (`bias`), so the
    frozen weights exist once; the originals are freed as their last reference goes. In a bf16 run an fp32 base
    layer becomes a `Bf16Linear` over the view, so transformers' forward, if it runs, multiplies as this one does.
    (Converted only now, after PEFT initialised the LoRA matrices beside fp32 base layers, as it always has.)"""
    linears = [base_linear(m) for m in modules]
    if any(linear is m and linear.weight.dtype != weight.dtype for linear, m in zip(linears, modules)):
        return  # a base layer outside PEFT's wrapper cannot be swapped here: it keeps its own copy
    row = 0
    for module, linear in zip(modules, linears):
        rows = linear.weight.shape[0]
        linear.weight = nn.Parameter(weight.narrow(0, row, rows), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.narrow(0, row, rows), requires_grad=False)
        if type(linear) is nn.Linear and weight.dtype == torch.bfloat16:
            module.base_layer = Bf16Linear(linear)  # takes the bf16 view as it is, without a copy
        row += rows


def release_file_mapping(model, fused: list) -> None:
    """Copy the frozen fp32 weights the fusion left in place (embeddings, norms, an untied head) into memory of
    their own. transformers loads a safetensors file as a memory map whose tensors are views of it, and every page
    read stays resident while any tensor of the file lives: without this, the pages of the layers' original weights,
    read once to fuse them, would stay counted beside the fused copy for the whole run."""
    kept = {t.untyped_storage().data_ptr() for t in fused if t is not None}
    for parameter in model.parameters():
        if (not parameter.requires_grad and parameter.dtype == torch.float32
                and parameter.untyped_storage().data_ptr() not in kept):
            parameter.data = parameter.data.clone()
