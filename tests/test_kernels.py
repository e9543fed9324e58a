"""tunelab's AMX kernels compute what the weights say: the 4-bit projection matches the dequantized weights up to
bf16 rounding, the int8 one exactly, and every row's result is the same whatever rows share its call. They run
only on CPUs with AMX (elsewhere their tests are skipped); where they do not run, or are turned off, the decoder
uses PyTorch's kernels, which the last test checks everywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tunelab.inference.kernels import INT4_MAX_ROWS, MAX_ROWS, amx_kernels
from tunelab.inference.weights import Matrix, int8_rows

kernels = amx_kernels()
needs_amx = pytest.mark.skipif(kernels is None, reason="the AMX kernels need an x86 CPU with AMX and a C compiler")


def int4_weights(n: int, k: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    codes[:, ::32], codes[:, 1::32] = 0, 15  # each group spans the whole grid, as a Q4_1 block does
    step = torch.rand(n, k // 32, generator=generator) * 0.01
    low = -torch.rand(n, k // 32, generator=generator) * 0.08
    weight = (codes.reshape(n, k // 32, 32) * step[..., None] + low[..., None]).reshape(n, k)
    return codes, step, low, weight


@needs_amx
@pytest.mark.parametrize("rows", [1, 3, 8, MAX_ROWS, 17, 40, INT4_MAX_ROWS])
def test_the_int4_kernel_multiplies_by_the_dequantized_weights(rows):
    codes, step, low, weight = int4_weights(96, 160)
    packed = kernels.pack4(codes, step, low)
    x = torch.randn(rows, 160).bfloat16()
    exact = x.float() @ weight.t()
    out = kernels.int4(x, *packed, 96)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
    assert (out.float() - exact).norm() / exact.norm() < 0.01  # weights and result rounded to bf16


@needs_amx
def test_the_int8_kernel_is_exact_up_to_fp32_sums():
    weight = torch.randn(48, 64)
    codes, scales = int8_rows(weight)
    x = torch.randn(5, 64).bfloat16()
    exact = x.double() @ (codes.double() * scales.double()[:, None]).t()
    out = kernels.int8(x, kernels.pack8(codes), scales.float(), 48)
    assert torch.allclose(out.double(), exact, rtol=1e-5, atol=1e-5)


@needs_amx
def test_a_rows_result_does_not_depend_on_the_rows_beside_it():
    codes, step, low, _ = int4_weights(64, 96, seed=3)
    packed = kernels.pack4(codes, step, low)
    x = torch.randn(INT4_MAX_ROWS, 96).bfloat16()
    together = kernels.int4(x, *packed, 64)
    for rows in (1, 5, 16, 17, 33, 64, 79):  # in the first chunk of 16, the last one, or one between
        assert torch.equal(kernels.int4(x[:rows].clone(), *packed, 64), together[:rows]), rows
        assert torch.equal(kernels.int4(x[-rows:].clone(), *packed, 64), together[-rows:]), rows


@needs_amx
def test_more_rows_than_a_call_takes_are_refused():
    codes, step, low, _ = int4_weights(16, 32)
    with pytest.raises(ValueError, match=f"1 to {INT4_MAX_ROWS} rows"):
        kernels.int4(torch.zeros(INT4_MAX_ROWS + 1, 32).bfloat16(), *kernels.pack4(codes, step, low), 16)
    with pytest.raises(ValueError, match=f"1 to {MAX_ROWS} rows"):
        kernels.int8(torch.zeros(MAX_ROWS + 1, 32).bfloat16(), kernels.pack8(torch.zeros(16, 32, dtype=torch.int8)),
                     torch.ones(16), 16)


@needs_amx
def test_a_matrix_uses_the_kernels_for_small_batches_and_agrees_with_its_other_paths():
    _, _, _, weight = int4_weights(64, 128, seed=5)
    matrix = Matrix(weight, None, "int4")
    assert matrix.fmt == "int4" and matrix.amx is kernels
    x = torch.randn(200, 128).bfloat16()
    exact = x.float() @ weight.t()
    for rows in (1, 2, 3, 8, 16, 20, 200):  # PyTorch's kernel, then the AMX kernel (in calls of 80 rows)
        out = matrix(x[:rows]).float()
        assert (out - exact[:rows]).norm() / exact[:rows].norm() < 0.01, rows
    assert not hasattr(matrix, "dense")  # the AMX kernel takes prompts too: no bf16 copy
    together = matrix(x, invariant=True)
    for rows in (1, 2, 90):  # invariant: the AMX kernel whatever the rows, so each row computes what it does alone
        assert torch.equal(matrix(x[:rows], invariant=True), together[:rows]), rows


def test_with_the_kernels_off_the_decoder_uses_pytorchs_and_computes_the_same():
    """Where the AMX kernels cannot run (no AMX, no compiler) or are turned off, nothing else changes."""
    script = (
        "import torch\n"
        "from tunelab.inference.kernels import amx_kernels\n"
        "from tunelab.inference.weights import Matrix\n"
        "assert amx_kernels() is None\n"
        "torch.manual_seed(0)\n"
        "codes = torch.randint(0, 16, (64, 128)); codes[:, ::32], codes[:, 1::32] = 0, 15\n"
        "weight = (codes.reshape(64, 4, 32) * 0.01 - 0.08).reshape(64, 128).float()\n"
        "m = Matrix(weight, None, 'int4')\n"
        "assert m.fmt == 'int4' and m.amx is None\n"
        "x = torch.randn(8, 128).bfloat16()\n"
        "exact = x.float() @ weight.t()\n"
        "assert (m(x).float() - exact).norm() / exact.norm() < 0.01\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TUNELAB_KERNELS": "off"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
