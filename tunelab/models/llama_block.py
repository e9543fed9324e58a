"""The Llama block that tunelab's two fast paths share: the lean LoRA training forward (train/lean_forward.py) and
the decoder (inference/decoder.py).

Both compute a Llama layer with fewer, larger operations than transformers: q/k/v and gate/up each from one fused
matrix, a fused matrix's LoRA A matrices side by side and its B matrices block-diagonal, rotary embeddings on q and
k in one expression. That arithmetic is here once: which models it runs, how a layer's projections are fused, the
RMSNorms, rotary embeddings and the layers themselves (`run_layers`). The two paths differ only in the two
callbacks `run_layers` takes. Training projects with frozen base weights (fp32 or bf16) plus PEFT's live LoRA
parameters, through autograd, and attends within each packed conversation after an optional shared prefix;
decoding projects with int4/int8/fp32 `Matrix`es plus each row's own adapter, and attends over its KV cache.

Qwen2 is this block with biases on q, k and v (`fused_weight` stacks them), so both paths run it too. What a
model's config asks for that the block does not compute (another architecture, sliding-window attention, a
position-dependent rotary scaling…) makes `refusals` name the reason, and the path steps aside for transformers'
forward: never a wrong answer. The catalog asks the same question of `config.json` without loading weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

# Fused projections: key -> (the layer's submodule, the projections whose outputs sit side by side)
PROJECTIONS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
               "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}

Norm = tuple[torch.Tensor, float]  # an RMSNorm: its weight and epsilon


# The architectures the block computes (config.json's model_type), and why others step aside.
ARCHITECTURES = ("llama", "qwen2")
NOT_THE_BLOCK = {
    "gemma3": "its (1 + w) norms, scaled embeddings, q/k norms, GELU-tanh MLP, post-attention and post-MLP norms "
              "and sliding-window layers with their own rotary base are not the Llama block",
}
# Rotary scalings the block gets right: it takes cos and sin from transformers' own rotary module, which is exact
# for these, whose frequencies do not depend on the sequence length ("dynamic" and "longrope" do).
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def architecture(config: dict) -> str | None:
    """The architecture's name as the catalog shows it: config.json's model_type, a text-only variant under the
    family's name (Gemma 3's "gemma3_text" is "gemma3")."""
    model_type = config.get("model_type")
    return model_type.removesuffix("_text") if model_type else None


def refusals(config: dict) -> dict[str, str | None]:
    """For each fast path ("training": the lean LoRA forward; "decoding": the decoder), why the block cannot run
    the model `config` (config.json's fields, or a transformers config's `to_dict()`) — None where it can."""
    why = _config_refusal(config)
    dropout = config.get("attention_dropout") or 0.0
    # transformers drops attention weights while training; the lean forward has no dropout
    training = why or (f"attention dropout ({dropout}) while training" if dropout else None)
    return {"training": training, "decoding": why}


def _config_refusal(config: dict) -> str | None:
    arch = architecture(config)
    if arch not in ARCHITECTURES:
        return f"a {arch or 'unknown'} model: " + NOT_THE_BLOCK.get(
            arch, "tunelab's fast paths run the Llama and Qwen2 architectures only")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        return f"a {act} activation (the block's MLP is SiLU-gated)"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        return f"{rope_type} rotary scaling, whose frequencies change with the sequence length"
    if config.get("use_sliding_window") or "sliding_attention" in (config.get("layer_types") or ()):
        return "sliding-window attention (the block attends over the whole context)"
    return None


def unsupported(model, path: str | None = None) -> str | None:
    """Why tunelab's block cannot run `model` on fast path `path` ("training" or "decoding"; None: either), or
    None when it can."""
    found = refusals(model.config.to_dict())
    why = found[path] if path else found["training"] or found["decoding"]
    if why is None and next(model.parameters()).device.type != "cpu":
        return "a model on an accelerator (the block is tuned for the CPU)"
    return why


def base_linear(module):
    """The linear layer itself, under a PEFT LoRA wrapper or not."""
    return getattr(module, "base_layer", module)


@dataclass(frozen=True)
class Dims:
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int

    @classmethod
    def of(cls, config) -> Dims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(heads, config.num_key_value_heads, head_dim, config.hidden_size)


def projection_modules(layer, key: str) -> list:
    """The linear modules (PEFT-wrapped or not) of a transformers Llama or Qwen2 `layer` that fused matrix `key`
    stacks."""
    parent, names = PROJECTIONS[key]
    return [getattr(getattr(layer, parent), name) for name in names]


def fused_weight(modules) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base weights of `modules` stacked into one matrix (their outputs side by side), and their biases (None
    when none has one; zeros for a module without one beside modules with one)."""
    linears = [base_linear(m) for m in modules]
    weight = torch.cat([linear.weight.detach() for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    return weight, torch.cat([linear.bias.detach() if linear.bias is not None
                              else weight.new_zeros(linear.out_features) for linear in linears])


def fused_lora(modules, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Adapter `name`'s update of the fused matrix of `modules`, `(x @ down.T) @ up.T` in fp32: down [rank, in] is
    their A matrices stacked, up [out, rank] their B matrices times each one's scaling, block-diagonal (zero for a
    module the adapter leaves alone). None if it touches none of them. Differentiable in the LoRA weights."""
    downs, ups = [], []
    for module in modules:
        if name in getattr(module, "lora_A", {}):
            downs.append(module.lora_A[name].weight.float())
            ups.append(module.lora_B[name].weight.float() * module.scaling[name])
        else:
            ups.append(torch.zeros(base_linear(module).out_features, 0))
    if not downs:
        return None
    return (downs[0] if len(downs) == 1 else torch.cat(downs)), (ups[0] if len(ups) == 1 else torch.block_diag(*ups))


def layer_norms(layer) -> tuple[Norm, Norm]:
    """A transformers Llama layer's RMSNorms: before attention and before the MLP."""
    return tuple((n.weight.detach(), n.variance_epsilon) for n in (layer.input_layernorm,
                                                                   layer.post_attention_layernorm))


def rms_norm(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    weight, eps = norm
    return F.rms_norm(x, weight.shape, weight, eps)


def rotary_tables(rotary, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [rows, T, 1, head_dim] of the model's `rotary` embedding at `positions` [rows, T], in x's dtype,
    broadcasting over the heads; sin's first half negated, so that rotate_half(x)·sin is x.roll(half)·sin."""
    cos, sin = rotary(x, positions)
    half = sin.shape[-1] // 2
    return cos[:, :, None], torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None]


def run_layers(x: torch.Tensor, norms: list[tuple[Norm, Norm]], dims: Dims, cos: torch.Tensor, sin: torch.Tensor,
               project: Callable, attend: Callable) -> torch.Tensor:
    """x [rows, T, hidden] through every layer (one per entry of `norms`), before the final norm.

    `project(i, key, h)`: layer i's fused matrix `key` (PROJECTIONS) applied to h, LoRA included.
    `attend(i, q, k, v)`: layer i's attention output [rows, heads, T, head_dim] for q [rows, heads, T, head_dim]
    and this call's k, v [rows, kv_heads, T, head_dim], rotary embeddings applied to q and k."""
    n, length = x.shape[:2]
    heads, kv, dim = dims.heads, dims.kv_heads, dims.head_dim
    for i, (before_attention, before_mlp) in enumerate(norms):
        qkv = project(i, "qkv", rms_norm(x, before_attention))
        qk = qkv[..., :(heads + kv) * dim].view(n, length, heads + kv, dim)
        qk = torch.addcmul(qk * cos, qk.roll(dim // 2, -1), sin)  # rotary: x·cos + rotate_half(x)·sin
        q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
        v = qkv[..., (heads + kv) * dim:].view(n, length, kv, dim).transpose(1, 2)
        attention = attend(i, q, k, v).transpose(1, 2).reshape(n, length, heads * dim)
        x = x + project(i, "o", attention)
        gate, up = project(i, "gate_up", rms_norm(x, before_mlp)).chunk(2, dim=-1)
        x = x + project(i, "down", F.silu(gate) * up)
    return x
