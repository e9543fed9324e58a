"""Cheaper weights for decoding on the CPU.

Decoding one token reads every weight once, so at small batch sizes its speed is the memory bandwidth divided by
the bytes of the weights. Three formats:

- `int4`: 4-bit integers in groups of 32 inputs, each group with its own step and offset — but only for a weight
  that already *is* such a grid. SmolLM2-135M-Instruct ships as a Q4_1 GGUF (exactly this layout), so its
  dequantized fp32 weights are recovered exactly (up to bf16 rounding of each group's step and offset) from an
  eighth of their fp32 bytes. A weight that is not on a 4-bit grid (a fully fine-tuned model, the Q8_0
  embedding) is never rounded to one: it gets int8.
- `int8`: int8 with one scale per output row (a quarter of fp32's bytes); the projection is exact up to rounding
  of the weights to 256 levels per row, which on SmolLM2-135M changes the validation loss by less than 0.01.
- `fp32`: the weights as trained, for CPUs where the integer kernels are slow.

The quantized formats take bf16 activations, which PyTorch's int4/int8 weight kernels need. `bench/decode.py`
measures speed and quality. `Matrix` holds one weight for the Llama decoder (`decoder.py`); `prepare()` converts
a transformers model in place for the generic decoding path (`generic.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from .kernels import INT4_MAX_ROWS as INT4_KERNEL_ROWS
from .kernels import MAX_ROWS as MAX_KERNEL_ROWS
from .kernels import amx_kernels

FORMATS = ("auto", "int4", "int8", "fp32")
GROUP = 32  # inputs per int4 group, as in GGUF's Q4_0/Q4_1 blocks
INT8_MAX_ROWS = 4  # generic path: beyond this many rows per step the int8 kernel re-reads its weights


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown decode weight format {fmt!r}; choose one of {', '.join(FORMATS)}")


class Matrix:
    """One projection `x @ weight.T (+ bias)`, stored for decoding in `fmt` ("int4" falls back to int8 for a
    weight that is not exactly on a 4-bit grid). Inputs are bf16 for int4/int8, fp32 for fp32.

    PyTorch's integer kernels dequantize their weights once per 4 input rows, so past `MAX_ROWS[fmt]` rows (a
    prompt, a large batch) a bf16 copy of the weight is faster: that work is compute-bound, not bandwidth-bound.
    On CPUs with AMX, tunelab's kernels (kernels/) take over from 3 rows (int4) or 1 (int8): they dequantize once
    per call, up to 80 rows (int4) or 16 (int8) a call. The int4 one is faster than the bf16 copy for prompts too
    (12–16 vs 31 ms for the 120 projections of SmolLM2-135M with 80 rows; bench/decode_parts.py) except long
    ones (~400 rows and more, inside a real pass), so with it an int4 matrix keeps no bf16 copy: its memory
    matters more."""

    MAX_ROWS = {"int4": 12, "int8": 6}  # where bf16 catches up with PyTorch's kernels, on SmolLM2-135M's layers
    # Where tunelab's AMX kernels take over, when they run on this CPU: with one or two rows PyTorch's int4 kernel
    # is faster (the AMX one costs its dequantization whatever the rows); past 48 rows the int8 one (a tile of 16
    # rows per call) loses to the bf16 copy.
    KERNEL_ROWS = {"int4": (3, None), "int8": (1, 3 * MAX_KERNEL_ROWS)}

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str):
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        grid = int4_grid(weight) if fmt == "int4" else None
        self.fmt = "int4" if grid is not None else ("fp32" if fmt == "fp32" else "int8")
        self.dtype = torch.float32 if self.fmt == "fp32" else torch.bfloat16
        self.bias = None if bias is None else bias.detach().to(self.dtype)
        self.amx = None
        if self.fmt == "int4":
            codes, step, low = grid
            self.amx = amx_kernels()
            if self.amx is not None:
                self.amx_codes, self.amx_scales = self.amx.pack4(codes, step, low)
                self.amx_run, self.amx_rows = self.amx.int4, INT4_KERNEL_ROWS
            else:
                self.dense = weight.to(torch.bfloat16)
            self.packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
            # PyTorch's kernel computes (code - 8) * scale + zero per group: zero is the group's value at code 8
            self.scales_and_zeros = torch.stack([step.t(), (low + 8 * step).t()], dim=-1).to(torch.bfloat16)
        elif self.fmt == "int8":
            self.dense = weight.to(torch.bfloat16)
            self.qweight, self.scales = int8_rows(weight)
            if self.out_features % 16 == 0 and self.in_features % 32 == 0:
                self.amx = amx_kernels()
            if self.amx is not None:
                self.amx_codes, self.amx_scales = self.amx.pack8(self.qweight), self.scales.float()
                self.amx_run, self.amx_rows = self.amx.int8, MAX_KERNEL_ROWS
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor, dtype: torch.dtype | None = None, *, invariant: bool = False) -> torch.Tensor:
        """`x @ weight.T (+ bias)` in `dtype` (default: the activations' dtype). The LM head asks for fp32: the int8
        kernel's sums are fp32, and rounding logits to bf16 would make near-ties exact ties. `invariant`: each
        row's result must not depend on the other rows of `x` (the AMX kernels, where they run, whatever the
        rows: a prompt computes the same processed alone or with others)."""
        dtype = dtype or self.dtype
        if self.fmt == "fp32":
            return nn.functional.linear(x, self.weight, self.bias).to(dtype)
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        low, high = self.KERNEL_ROWS[self.fmt]
        if self.amx is not None and (invariant or rows >= low) and (high is None or rows <= high):
            if rows <= self.amx_rows:
                out = self.amx_run(flat, self.amx_codes, self.amx_scales, self.out_features)
            else:
                out = torch.cat([self.amx_run(part, self.amx_codes, self.amx_scales, self.out_features)
                                 for part in flat.split(self.amx_rows)])
        elif rows > self.MAX_ROWS[self.fmt]:
            return nn.functional.linear(x, self.dense, self.bias).to(dtype)
        elif self.fmt == "int4":
            out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        else:
            out = torch._weight_int8pack_mm(flat, self.qweight, self.scales)
        if out.dtype != dtype:
            out = out.to(dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    @property
    def nbytes(self) -> int:
        """What one decode step reads (the bf16 copy for large batches is not counted)."""
        held = {"int4": ("packed", "scales_and_zeros"), "int8": ("qweight", "scales"), "fp32": ("weight",)}
        return sum(getattr(self, name).nbytes for name in held[self.fmt])


def int4_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`(codes [out, in] int32 0..15, step [out, in/32], low [out, in/32])` such that every weight equals
    `low + step * code` of its group, or None when the weight is not on such a grid (or the kernel's shape rules
    rule it out). A Q4_1 block's smallest value has code 0 and its largest code 15, so both are found from the
    values alone."""
    out_features, in_features = weight.shape
    if in_features % GROUP or out_features % 16:
        return None
    groups = weight.reshape(out_features, in_features // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    step = (high - low) / 15
    safe = torch.where(step > 0, step, torch.ones_like(step))[..., None]
    codes = torch.round((groups - low[..., None]) / safe)
    if ((codes * safe + low[..., None] - groups).abs() > 1e-3 * safe).any():
        return None  # some value is off the grid: rounding it would change the model
    return codes.to(torch.int32).reshape(out_features, in_features), step, low


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and one bf16 scale per output row."""
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
    return torch.round(weight / scales[:, None]).to(torch.int8), scales.to(torch.bfloat16)


# --- the generic path: transformers modules converted in place ---


class Int8Linear(nn.Linear):
    """A drop-in `nn.Linear` (PEFT wraps it like any other) holding int8 rows plus a bf16 copy."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.weight = nn.Parameter(weight.to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                   requires_grad=False)
        qweight, scales = int8_rows(weight.float())
        self.register_buffer("qweight", qweight, persistent=False)
        self.register_buffer("scales", scales, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if x.dim() < 2 or x.shape[-2] != 1 or x.numel() > INT8_MAX_ROWS * self.in_features:
            return nn.functional.linear(x, self.weight, self.bias)  # many rows: compute-bound, bf16 is faster
        flat = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight, self.scales)
        out = flat.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def prepare(model: nn.Module, fmt: str = "auto") -> str:
    """Convert `model` (fp32, on the CPU, eval mode) in place for the generic decoding path; return the format
    chosen ("int4" is int8 here: the generic path has no 4-bit kernel)."""
    check_format(fmt)
    if fmt == "fp32" or next(model.parameters()).device.type != "cpu":
        return "fp32"
    if fmt == "auto" and not integer_kernels_fast():
        return "fp32"
    model.to(torch.bfloat16)  # norms, embeddings and attention follow the activations' dtype
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return "int8"


def integer_kernels_fast() -> bool:
    """Whether PyTorch runs its int4/int8 weight kernels vectorised on this CPU (x86 with AVX2 or AVX-512).
    Decided by the CPU, not by timing, so a busy machine never flips the choice."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


