"""tunelab's own CPU kernels for decode steps and prompts (amx.c): the 4-bit layer projections and the int8 LM head
with Intel AMX tile products.

They are compiled when tunelab is installed, into the extension module `_amx` beside this file (setup.py), or not
at all: nothing is compiled or loaded at run time from anywhere else. They are used where they can run: x86 CPUs
with AMX and AVX512-BF16 (Intel Xeon since Sapphire Rapids), Linux granting the process AMX state, and the
extension built. Anywhere else `amx_kernels()` is None and the decoder keeps PyTorch's kernels, so nothing depends
on them (`TUNELAB_KERNELS=off` turns them off). The first call says on stderr, once, which kernels run and why.
The extension links libgomp.so.1, the soname of the OpenMP runtime torch has already loaded (it is imported after
torch), and so shares the calling thread's team.

Every call is checked here (`check_int4`, `check_int8`: dtypes, CPU, contiguity, shapes) before a pointer reaches
the C code, which trusts them.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import torch

from ...config import get_settings

CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile", "amx_bf16"}
MAX_ROWS = 16  # rows of x per call of the int8 kernel: one AMX tile
INT4_MAX_ROWS = 80  # rows of x per call of the int4 kernel: five tiles of 16 (amx.c)


class AmxKernels:
    def __init__(self, module):
        if module.init() != 0:
            raise OSError("Linux refused this process AMX state")
        self._int4, self._int8 = module.int4_gemm, module.int8_gemm

    @staticmethod
    def pack4(codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [N, K] (0..15), step and low [N, K/32] → the int4 kernel's (codes, scales) layout (see amx.c)."""
        n, k = codes.shape
        _check_weight_shape(n, k)
        if step.shape != (n, k // 32) or low.shape != (n, k // 32):
            raise ValueError(f"step and low must be [{n}, {k // 32}] for codes [{n}, {k}], not "
                             f"{list(step.shape)} and {list(low.shape)}")
        tiles = codes.to(torch.uint8).reshape(n // 16, 2, 8, k // 2, 2)  # tile, half, output, pair, input
        lanes = tiles.permute(0, 1, 3, 2, 4).reshape(n // 16, 2, k // 2, 16)  # lane 2i + j: output i, input j
        packed = (lanes[:, 0] | (lanes[:, 1] << 4)).contiguous()
        scales = torch.stack([step, low]).to(torch.bfloat16)  # [2, N, G]
        scales = scales.reshape(2, n // 16, 16, k // 32).permute(1, 3, 0, 2).contiguous()  # tile, group, 2, 16
        return packed, scales

    def int4(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
        """x [M, K] bf16 (M ≤ INT4_MAX_ROWS), codes and scales from `pack4` → [M, n] bf16."""
        x = x.contiguous()
        check_int4(x, codes, scales, n)
        return self._run(self._int4, x, codes, scales, n, torch.bfloat16)

    @staticmethod
    def pack8(codes: torch.Tensor) -> torch.Tensor:
        """int8 codes [N, K] → the int8 kernel's layout: per tile of 16 outputs and pair of inputs, 32 bytes."""
        n, k = codes.shape
        _check_weight_shape(n, k)
        return codes.reshape(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()

    def int8(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
        """x [M, K] bf16 (M ≤ MAX_ROWS), codes from `pack8`, fp32 scales [n] → [M, n] fp32."""
        x = x.contiguous()
        check_int8(x, codes, scales, n)
        return self._run(self._int8, x, codes, scales, n, torch.float32)

    @staticmethod
    def _run(function, x, codes, scales, n, dtype) -> torch.Tensor:
        out = torch.empty(x.shape[0], n, dtype=dtype)
        function(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), out.data_ptr(), x.shape[0], n, x.shape[1])
        return out


def check_int4(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> None:
    """Raise ValueError unless the int4 kernel can take these: x [M, K] bf16 with 1 ≤ M ≤ INT4_MAX_ROWS, codes
    [n/16, K/2, 16] uint8 and scales [n/16, K/32, 2, 16] bf16 (`pack4`'s), all contiguous on the CPU, n a multiple
    of 16 and K of 32."""
    if x.dim() == 2:  # a call that fits, in one expression: a decode step makes 121 calls (~2 us saved on each)
        m, k = x.shape
        if (0 < m <= INT4_MAX_ROWS and 0 < n and n % 16 == 0 and 0 < k and k % 32 == 0 and x.dtype == torch.bfloat16
                and codes.dtype == torch.uint8 and scales.dtype == torch.bfloat16
                and codes.shape == (n // 16, k // 2, 16) and scales.shape == (n // 16, k // 32, 2, 16)
                and x.is_cpu and codes.is_cpu and scales.is_cpu
                and x.is_contiguous() and codes.is_contiguous() and scales.is_contiguous()):
            return
    k = _check_x(x, INT4_MAX_ROWS)  # what does not fit, and why
    _check_weight_shape(n, k)
    _check_tensor("codes", codes, torch.uint8, (n // 16, k // 2, 16))
    _check_tensor("scales", scales, torch.bfloat16, (n // 16, k // 32, 2, 16))


def check_int8(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> None:
    """Raise ValueError unless the int8 kernel can take these: x [M, K] bf16 with 1 ≤ M ≤ MAX_ROWS, codes
    [n/16, K/2, 16, 2] int8 (`pack8`'s) and scales [n] fp32, all contiguous on the CPU, n a multiple of 16 and K of
    32."""
    if x.dim() == 2:  # as in check_int4
        m, k = x.shape
        if (0 < m <= MAX_ROWS and 0 < n and n % 16 == 0 and 0 < k and k % 32 == 0 and x.dtype == torch.bfloat16
                and codes.dtype == torch.int8 and scales.dtype == torch.float32
                and codes.shape == (n // 16, k // 2, 16, 2) and scales.shape == (n,)
                and x.is_cpu and codes.is_cpu and scales.is_cpu
                and x.is_contiguous() and codes.is_contiguous() and scales.is_contiguous()):
            return
    k = _check_x(x, MAX_ROWS)
    _check_weight_shape(n, k)
    _check_tensor("codes", codes, torch.int8, (n // 16, k // 2, 16, 2))
    _check_tensor("scales", scales, torch.float32, (n,))


def _check_x(x: torch.Tensor, max_rows: int) -> int:
    if x.dim() != 2:
        raise ValueError(f"the kernel takes x as [rows, inputs], not {list(x.shape)}")
    if not 0 < x.shape[0] <= max_rows:
        raise ValueError(f"the kernel takes 1 to {max_rows} rows, not {x.shape[0]}")
    _check_tensor("x", x, torch.bfloat16, x.shape)
    return x.shape[1]


def _check_weight_shape(n: int, k: int) -> None:
    if n <= 0 or n % 16 or k <= 0 or k % 32:
        raise ValueError(f"the kernels take weights of [N, K] with N a multiple of 16 and K of 32, not [{n}, {k}]")


def _check_tensor(name: str, tensor: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if tensor.dtype != dtype:
        raise ValueError(f"the kernel takes {name} in {dtype}, not {tensor.dtype}")
    if tensor.shape != shape:
        raise ValueError(f"the kernel takes {name} of shape {list(shape)}, not {list(tensor.shape)}")
    if not tensor.is_cpu or not tensor.is_contiguous():
        raise ValueError(f"the kernel takes {name} contiguous on the CPU, not {tensor.device} with strides "
                         f"{tensor.stride()}")


@functools.cache
def amx_kernels() -> AmxKernels | None:
    """The kernels, or None where they cannot run here. The first call says which on stderr."""
    kernels, why_not = load()
    if kernels is not None:
        print("tunelab: decode kernels: tunelab's AMX kernels (4-bit projections, int8 LM head) with PyTorch's",
              file=sys.stderr)
    else:
        print(f"tunelab: decode kernels: PyTorch's only; tunelab's AMX kernels do not run: {why_not}",
              file=sys.stderr)
    return kernels


def load() -> tuple[AmxKernels | None, str]:
    """`(the kernels, "")` where they run, else `(None, every reason they do not)`."""
    if get_settings().kernels == "off":
        return None, "TUNELAB_KERNELS=off"
    reasons = []
    missing = CPU_FLAGS - _cpu_flags()
    if missing:
        reasons.append(f"this CPU lacks the AMX and AVX-512 instructions they use ({', '.join(sorted(missing))})")
    try:
        amx = importlib.import_module(f"{__name__}._amx")  # after torch: see the docstring
    except ModuleNotFoundError:
        reasons.append("they were not built when tunelab was installed (they build on x86-64 Linux with a C "
                       "compiler that takes AMX flags, such as gcc 11 or later, and Python's headers; `pip install "
                       "-v` shows the build)")
    except ImportError as exc:
        reasons.append(f"their extension module does not load: {exc}")
    if reasons:
        return None, "; ".join(reasons)
    try:
        return AmxKernels(amx), ""
    except OSError as exc:
        return None, str(exc)


def _cpu_flags() -> set[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(flags.split(":", 1)[1].split())
