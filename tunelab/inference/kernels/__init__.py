"""tunelab's own CPU kernels for decode steps and prompts (amx.c): the 4-bit layer projections and the int8 LM head
with Intel AMX tile products, compiled on first use with the system's C compiler and loaded with ctypes.

They are used where they can run: x86 CPUs with AMX and AVX512-BF16 (Intel Xeon since Sapphire Rapids), Linux
granting the process AMX state, and a C compiler on the PATH. Anywhere else `amx_kernels()` is None and the
decoder keeps PyTorch's kernels, so nothing depends on them (`TUNELAB_KERNELS=off` turns them off). The
library is built with -fopenmp and so shares the OpenMP runtime torch has already loaded (libgomp.so.1, the
same soname), and with it the calling thread's team. It is cached per source, compiler and flags under
`$XDG_CACHE_HOME/tunelab/kernels` (default `~/.cache`), written under a temporary name first and renamed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ...config import get_settings

SOURCE = Path(__file__).with_name("amx.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-fopenmp",
         "-shared", "-fPIC"]
CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile", "amx_bf16"}
MAX_ROWS = 16  # rows of x per call of the int8 kernel: one AMX tile
INT4_MAX_ROWS = 80  # rows of x per call of the int4 kernel: five tiles of 16 (amx.c)


class AmxKernels:
    def __init__(self, library: ctypes.CDLL):
        if library.amx_init() != 0:
            raise OSError("Linux refused this process AMX state")
        self._int4, self._int8 = library.int4_gemm, library.int8_gemm
        for function in (self._int4, self._int8):
            function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 3
            function.restype = None

    def pack4(self, codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [N, K] (0..15), step and low [N, K/32] → the int4 kernel's (codes, scales) layout (see amx.c)."""
        n, k = codes.shape
        tiles = codes.to(torch.uint8).reshape(n // 16, 2, 8, k // 2, 2)  # tile, half, output, pair, input
        lanes = tiles.permute(0, 1, 3, 2, 4).reshape(n // 16, 2, k // 2, 16)  # lane 2i + j: output i, input j
        packed = (lanes[:, 0] | (lanes[:, 1] << 4)).contiguous()
        scales = torch.stack([step, low]).to(torch.bfloat16)  # [2, N, G]
        scales = scales.reshape(2, n // 16, 16, k // 32).permute(1, 3, 0, 2).contiguous()  # tile, group, 2, 16
        return packed, scales

    def int4(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
        """x [M, K] bf16 (M ≤ INT4_MAX_ROWS), codes and scales from `pack4` → [M, n] bf16."""
        return self._run(self._int4, x, codes, scales, n, torch.bfloat16, INT4_MAX_ROWS)

    def pack8(self, codes: torch.Tensor) -> torch.Tensor:
        """int8 codes [N, K] → the int8 kernel's layout: per tile of 16 outputs and pair of inputs, 32 bytes."""
        n, k = codes.shape
        return codes.reshape(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()

    def int8(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
        """x [M, K] bf16 (M ≤ MAX_ROWS), codes from `pack8`, fp32 scales [n] → [M, n] fp32."""
        return self._run(self._int8, x, codes, scales, n, torch.float32, MAX_ROWS)

    @staticmethod
    def _run(function, x, codes, scales, n, dtype, max_rows) -> torch.Tensor:
        if not 0 < x.shape[0] <= max_rows:
            raise ValueError(f"the kernel takes 1 to {max_rows} rows, not {x.shape[0]}")
        x = x.contiguous()
        out = torch.empty(x.shape[0], n, dtype=dtype)
        function(x.data_ptr(), codes.data_ptr(), scales.data_ptr(), out.data_ptr(), x.shape[0], n, x.shape[1])
        return out


@functools.cache
def amx_kernels() -> AmxKernels | None:
    """The kernels, compiled and loaded, or None where they cannot run here."""
    if get_settings().kernels == "off" or not _cpu_can() or shutil.which("cc") is None:
        return None
    try:
        return AmxKernels(ctypes.CDLL(str(_compiled())))
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_can() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return CPU_FLAGS <= set(flags.split(":", 1)[1].split())


def _compiled() -> Path:
    compiler = subprocess.run(["cc", "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *FLAGS]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunelab" / "kernels"
    library = cache / f"amx-{key}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = Path(tmp) / library.name
            subprocess.run(["cc", *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True)
            built.replace(library)
    return library
