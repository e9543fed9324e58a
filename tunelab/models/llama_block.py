"""What tunelab's own Llama forward passes (inference/llama.py for decoding, train/llama.py for LoRA training)
rely on: which models are Llama-architecture, and how a layer's projections are fused."""

from __future__ import annotations

# Fused projections: key -> (the layer's submodule, the projections whose outputs sit side by side)
PROJECTIONS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
               "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}


def unsupported(model) -> str | None:
    """Why tunelab's Llama forward cannot run `model` (None: it can)."""
    config = model.config
    if config.model_type != "llama":
        return f"a {config.model_type} model (tunelab's forward runs Llama-architecture models)"
    if config.hidden_act != "silu":
        return f"a {config.hidden_act} activation"
    if next(model.parameters()).device.type != "cpu":
        return "a model on an accelerator"
    return None


def base_linear(module):
    """The linear layer itself, under a PEFT LoRA wrapper or not."""
    return getattr(module, "base_layer", module)
