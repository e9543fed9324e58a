"""bf16 matrix products for the frozen base weights of a LoRA fine-tune, on CPUs that compute bf16 natively.

With LoRA the base model's weights never change, so they can be held in bf16 and multiplied in bf16 while
everything that trains or accumulates stays fp32: the LoRA matrices and their gradients, the residual stream,
norms, attention, the loss and the optimizer. That is the usual mixed-precision recipe; on a CPU with AMX or
AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) a bf16 matrix product runs several times
faster than fp32, elsewhere bf16 is emulated and slower, so `auto` picks by the CPU, never by timing (a resumed
run must compute exactly what the interrupted one did; the choice is recorded with the run).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(asked: str, method: str) -> str:
    """The matmul precision a run uses: bf16 only for LoRA on a CPU with native bf16."""
    if asked not in PRECISIONS:
        raise ValueError(f"unknown training precision {asked!r}; choose one of {', '.join(PRECISIONS)}")
    if method != "lora" or torch.cuda.is_available():
        return "fp32"
    if asked == "auto":
        return "bf16" if native_bf16() else "fp32"
    return asked


def native_bf16() -> bool:
    cpu = torch.cpu
    probes = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if probe is not None)


class Bf16Linear(nn.Linear):
    """A frozen `nn.Linear` (PEFT wraps it like any other) whose weight is bf16: fp32 in, bf16 product, fp32
    out."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def use_bf16_matmuls(model: nn.Module, *, head_only: bool = False) -> None:
    """Replace every linear layer of a transformers model (the LM head included; the input embeddings stay fp32)
    in place, or only its LM head (the lean forward fuses the others itself)."""
    if head_only:
        model.set_output_embeddings(Bf16Linear(model.get_output_embeddings()))
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Bf16Linear(child))
