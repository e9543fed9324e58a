"""Which thread gets the CPU cores in the server process.

PyTorch parallelises each operation with OpenMP, and every Python thread that runs a parallel operation keeps its
own team of OpenMP worker threads. Once the process holds more of those threads than the machine has cores,
OpenMP stops letting idle workers spin and puts them to sleep between operations; a decode step runs a few
hundred small parallel operations, so it then spends as long waking threads as computing (on 2 cores: ~40 ms per
token instead of ~23 ms for SmolLM2-135M).

So the server process starts with one OpenMP thread per Python thread (`reserve_cores()`, before torch is
imported), and only the inference engine's scheduler thread takes all the cores (`use_all_cores_here()`).
Request threads (the content filter, loading a model) run single-threaded, and the training child process gets
the environment the user started the server with, less the reservation and any secret (`child_environment`).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path

_reserved = False  # True once this process set OMP_NUM_THREADS=1 itself


def reserve_cores() -> None:
    """Run before torch is imported. Leaves an explicit OMP_NUM_THREADS (the user's choice) alone."""
    global _reserved
    if "torch" in sys.modules or "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    _reserved = True


# Names of variables that hold credentials (TUNELAB_API_KEY, OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH_SOCK)(_|$)", re.I)


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment for a child process (a training run): without the reservation, so it uses every core, and
    without credentials, which a training run never needs (it reads local files and its own database)."""
    drop = {"OMP_NUM_THREADS"} if _reserved else set()
    return {k: v for k, v in env.items() if k not in drop and not SECRET_NAME.search(k)}


def use_all_cores_here() -> None:
    """Let the calling thread's torch operations use every core, without changing other threads."""
    if not _reserved:
        return  # the default (or the user's OMP_NUM_THREADS) already applies to every thread
    import torch

    torch.get_num_threads()  # torch's once-per-thread set-up runs first, so it cannot undo the next line
    omp = _openmp()
    cores = len(os.sched_getaffinity(0))
    if omp is not None:
        omp.omp_set_num_threads(cores)
    else:  # an OpenMP runtime we cannot reach: every thread gets the cores, at the cost described above
        torch.set_num_threads(cores)


def _openmp():
    """The OpenMP runtime torch is linked with (the one it ships, not whichever the system has)."""
    import torch

    root = Path(torch.__file__).parent
    for candidate in [*sorted((root / "lib").glob("libgomp*.so*")), *sorted((root.parent / "torch.libs")
                                                                          .glob("libgomp*.so*"))]:
        try:
            return ctypes.CDLL(str(candidate))
        except OSError:
            continue
    return None
