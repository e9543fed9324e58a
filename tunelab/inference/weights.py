"""Cheaper weights for decoding on the CPU.

Decoding one token reads every weight once, so at small batch sizes its speed is the memory bandwidth divided by
the bytes of the weights. The `int8` format keeps each linear layer's weight twice: int8 with one scale per output
row (a quarter of fp32's bytes) for decode steps of up to `INT8_MAX_ROWS` answers, and bf16 for prompts and
larger batches, where the work is compute-bound and bf16 matrix multiplication is faster. Activations stay bf16; the projection is exact up to rounding of the
weights to 256 levels per row, which on SmolLM2-135M changes the validation loss by less than 0.01
(`bench/decode.py` measures it).

`auto` times both formats on the model's own largest layer and keeps int8 only where it is faster: CPUs without
fast bf16/int8 paths keep fp32.
"""

from __future__ import annotations

import time

import torch
from torch import nn

FORMATS = ("auto", "fp32", "int8")
INT8_MAX_ROWS = 4  # beyond this many rows per step the int8 kernel re-reads its weights and bf16 catches up


class Int8Linear(nn.Linear):
    """A drop-in `nn.Linear` (PEFT wraps it like any other) holding int8 rows plus a bf16 copy."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.weight = nn.Parameter(weight.to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                   requires_grad=False)
        scales = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127
        self.register_buffer("qweight", torch.round(weight.float() / scales[:, None]).to(torch.int8),
                             persistent=False)
        self.register_buffer("scales", scales.to(torch.bfloat16), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if x.dim() < 2 or x.shape[-2] != 1 or x.numel() > INT8_MAX_ROWS * self.in_features:
            return nn.functional.linear(x, self.weight, self.bias)  # many rows: compute-bound, bf16 is faster
        flat = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight, self.scales)
        out = flat.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def prepare(model: nn.Module, fmt: str = "auto") -> str:
    """Convert `model` (fp32, on the CPU, eval mode) in place for decoding; return the format chosen."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown decode weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "fp32" or next(model.parameters()).device.type != "cpu":
        return "fp32"
    if fmt == "auto" and not int8_is_faster(_largest_linear(model)):
        return "fp32"
    model.to(torch.bfloat16)  # norms, embeddings and attention follow the activations' dtype
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return "int8"


def int8_is_faster(linear: nn.Linear) -> bool:
    """Time one decode step and one short prompt through `linear` in both formats."""
    quantized = Int8Linear(linear)
    token, prompt = torch.randn(1, 1, linear.in_features), torch.randn(1, 32, linear.in_features)

    def seconds(layer: nn.Module) -> float:
        with torch.no_grad():
            layer(token), layer(prompt)  # first calls pay one-off set-up
            started = time.perf_counter()
            for _ in range(4):
                layer(token)
            layer(prompt)
            return time.perf_counter() - started

    return seconds(quantized) * 1.2 < seconds(linear)


def _largest_linear(model: nn.Module) -> nn.Linear:
    return max((m for m in model.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel())
