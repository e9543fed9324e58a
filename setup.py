"""Builds tunelab's AMX kernels (tunelab/inference/kernels/amx.c) into the extension module
tunelab.inference.kernels._amx when tunelab is installed (`pip install .`, `pip install -e .`, `make install`);
everything else about the package is in pyproject.toml.

The build needs no torch: it is a plain C extension. It is optional: where the compiler refuses the AMX flags the
install goes on without it (with a warning in the build's output) and tunelab decodes with PyTorch's kernels,
saying why in its log. -fopenmp links the library against libgomp.so.1, the soname of the OpenMP runtime torch
loads first, so the kernels run in torch's thread team.
"""

import platform
import sys

from setuptools import Extension, setup

FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-fopenmp"]

# Linux grants AMX state through arch_prctl, so the kernels are for x86-64 Linux only.
amx = Extension("tunelab.inference.kernels._amx", sources=["tunelab/inference/kernels/amx.c"],
                extra_compile_args=FLAGS, extra_link_args=["-fopenmp"], optional=True)
setup(ext_modules=[amx] if sys.platform == "linux" and platform.machine() == "x86_64" else [])
