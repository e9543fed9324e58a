"""tunelab's AMX kernels compute what the weights say: the 4-bit projection matches the dequantized weights up to
bf16 rounding, the int8 one exactly, and every row's result is the same whatever rows share its call. They run
only on CPUs with AMX (elsewhere their tests are skipped); where they do not run, or are turned off, the decoder
uses PyTorch's kernels, which the last test checks everywhere. Every call's dtypes and shapes are checked before it
reaches the C code, and where the kernels come from (the extension built at install, nothing else) is tested on
every machine."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tunelab.inference.kernels as kernels_module
from tunelab.inference.kernels import INT4_MAX_ROWS, MAX_ROWS, AmxKernels, amx_kernels, check_int4, check_int8, load
from tunelab.inference.weights import Matrix, int8_rows

kernels = amx_kernels()
needs_amx = pytest.mark.skipif(kernels is None, reason="the AMX kernels need an x86 CPU with AMX and tunelab's "
                               "install to have built them")


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


def int4_call(rows: int = 2, n: int = 32, k: int = 64):
    codes, step, low, _ = int4_weights(n, k)
    return (torch.randn(rows, k).bfloat16(), *AmxKernels.pack4(codes, step, low), n)


def int8_call(rows: int = 2, n: int = 32, k: int = 64):
    return (torch.randn(rows, k).bfloat16(), AmxKernels.pack8(torch.ones(n, k, dtype=torch.int8)), torch.ones(n), n)


def test_calls_the_kernels_can_take_pass_their_checks():
    check_int4(*int4_call(rows=1))
    check_int4(*int4_call(rows=INT4_MAX_ROWS))
    check_int8(*int8_call(rows=MAX_ROWS))


def replace(call: tuple, index: int, value) -> tuple:
    return call[:index] + (value,) + call[index + 1:]


@pytest.mark.parametrize("case, match", [
    (lambda c: replace(c, 0, c[0].float()), "x in torch.bfloat16, not torch.float32"),
    (lambda c: replace(c, 0, c[0][0]), r"x as \[rows, inputs\]"),
    (lambda c: replace(c, 0, c[0][:0]), "1 to 80 rows, not 0"),
    (lambda c: replace(c, 0, torch.zeros(81, 64).bfloat16()), "1 to 80 rows, not 81"),
    (lambda c: replace(c, 0, torch.zeros(2, 96).bfloat16()), r"codes of shape \[2, 48, 16\], not \[2, 32, 16\]"),
    (lambda c: replace(c, 0, torch.zeros(2, 48).bfloat16()), r"K of 32, not \[32, 48\]"),
    (lambda c: replace(c, 3, 24), r"N a multiple of 16 and K of 32, not \[24, 64\]"),
    (lambda c: replace(c, 3, 48), r"codes of shape \[3, 32, 16\], not \[2, 32, 16\]"),
    (lambda c: replace(c, 1, c[1].to(torch.int8)), "codes in torch.uint8, not torch.int8"),
    (lambda c: replace(c, 2, c[2].float()), "scales in torch.bfloat16, not torch.float32"),
    (lambda c: replace(c, 2, c[2].transpose(0, 1).contiguous().transpose(0, 1)), "scales contiguous on the CPU"),
    (lambda c: replace(c, 0, c[0].to("meta")), "x contiguous on the CPU, not meta"),
])
def test_a_call_the_int4_kernel_cannot_take_is_refused_before_it_reaches_the_c_code(case, match):
    with pytest.raises(ValueError, match=match):
        check_int4(*case(int4_call()))


@pytest.mark.parametrize("case, match", [
    (lambda c: replace(c, 0, torch.zeros(17, 64).bfloat16()), "1 to 16 rows, not 17"),
    (lambda c: replace(c, 1, c[1].to(torch.uint8)), "codes in torch.int8, not torch.uint8"),
    (lambda c: replace(c, 2, c[2].bfloat16()), "scales in torch.float32, not torch.bfloat16"),
    (lambda c: replace(c, 2, torch.ones(16)), r"scales of shape \[32\], not \[16\]"),
    (lambda c: replace(c, 1, c[1][:, ::2]), r"codes of shape \[2, 32, 16, 2\], not \[2, 16, 16, 2\]"),
])
def test_a_call_the_int8_kernel_cannot_take_is_refused(case, match):
    with pytest.raises(ValueError, match=match):
        check_int8(*case(int8_call()))


def test_weights_the_kernels_cannot_take_are_not_packed():
    codes, step, low, _ = int4_weights(32, 64)
    with pytest.raises(ValueError, match=r"N a multiple of 16 and K of 32, not \[24, 64\]"):
        AmxKernels.pack4(codes[:24], step[:24], low[:24])
    with pytest.raises(ValueError, match=r"step and low must be \[32, 2\]"):
        AmxKernels.pack4(codes, step[:, :1], low)
    with pytest.raises(ValueError, match=r"not \[16, 48\]"):
        AmxKernels.pack8(torch.zeros(16, 48, dtype=torch.int8))


def test_the_wrapper_checks_before_the_native_call_and_passes_it_the_pointers_and_sizes():
    """Without AMX: a stand-in for the extension module records what it is given."""
    calls = []
    module = SimpleNamespace(init=lambda: 0, int4_gemm=lambda *args: calls.append(("int4", args)),
                             int8_gemm=lambda *args: calls.append(("int8", args)))
    wrapper = AmxKernels(module)
    x, codes, scales, n = int4_call(rows=3)
    out = wrapper.int4(x, codes, scales, n)
    assert out.dtype == torch.bfloat16 and out.shape == (3, n)
    assert calls == [("int4", (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), out.data_ptr(), 3, n, 64))]
    x, codes, scales, n = int8_call(rows=5)
    out = wrapper.int8(x, codes, scales, n)
    assert out.dtype == torch.float32 and calls[-1] == (
        "int8", (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), out.data_ptr(), 5, n, 64))
    with pytest.raises(ValueError):
        wrapper.int4(x.float(), *int4_call()[1:])
    with pytest.raises(ValueError):
        wrapper.int8(*int8_call(rows=MAX_ROWS + 1))
    assert len(calls) == 2
    with pytest.raises(OSError, match="Linux refused"):
        AmxKernels(SimpleNamespace(init=lambda: -1))


def test_each_reason_the_kernels_do_not_run_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_KERNELS", "off")
    assert load() == (None, "TUNELAB_KERNELS=off")
    monkeypatch.delenv("TUNELAB_KERNELS")
    # as if the install had not built the extension: the package's directory without it
    monkeypatch.setattr(kernels_module, "__path__", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "tunelab.inference.kernels._amx", raising=False)
    monkeypatch.delattr(kernels_module, "_amx", raising=False)
    kernels, why_not = load()
    assert kernels is None and "not built when tunelab was installed" in why_not
    monkeypatch.setattr(kernels_module, "_cpu_flags", lambda: {"avx2", "fma"})
    assert load()[1].startswith("this CPU lacks the AMX and AVX-512 instructions they use (amx_bf16, amx_tile, ")


def test_the_extension_loads_from_the_package_where_the_install_built_it():
    """The kernels come from the extension module built with tunelab, beside the package's Python files, sharing
    torch's OpenMP runtime; where it was not built, that is the reason given."""
    package = Path(kernels_module.__file__).parent
    built = [path for path in package.iterdir()
             if path.name.startswith("_amx.") and path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    if not built:
        assert "not built when tunelab was installed" in load()[1]
        pytest.skip("tunelab's install did not build the kernels here")
    from tunelab.inference.kernels import _amx

    assert Path(_amx.__file__) in built
    assert callable(_amx.int4_gemm) and callable(_amx.int8_gemm)
    openmp = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len(openmp) == 1, openmp  # torch's, which the kernels share


def test_the_kernels_are_looked_for_once_said_once_and_nothing_is_written_to_a_cache(tmp_path):
    script = (
        "from tunelab.inference.kernels import amx_kernels\n"
        "from tunelab.inference.weights import Matrix\n"
        "import torch\n"
        "amx_kernels(); amx_kernels()\n"
        "Matrix(torch.randn(32, 64), None, 'int8')\n")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("tunelab: decode kernels: ")]
    assert len(said) == 1, done.stderr
    assert not [path for path in tmp_path.rglob("*") if "tunelab" in str(path.relative_to(tmp_path))]
