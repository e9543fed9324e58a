"""Starting a training run on N processes with PyTorch's own launcher, and tying every process to its parent.

    python -m tunelab.train.launch 2 tunelab.jobs.runner JOB_ID
    # runs: torchrun --standalone --nproc_per_node 2 --max-restarts 0 -m tunelab.jobs.runner JOB_ID

The job worker and `tunelab train --nproc N` start the launcher through this module, which runs torchrun's own
entry point (`torch.distributed.run.main`) in a process that leaves as soon as its parent is gone; each rank sets
the Linux parent-death signal (prctl PR_SET_PDEATHSIG: SIGKILL) on itself, so killing the server or the CLI ends
every process of the run. No restarts inside torchrun: a dead rank ends the group, and the job's worker requeues
the job, which resumes from its last complete checkpoint. Imports nothing heavy: the server uses it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

MAX_PROCESSES = 64
# How long torchrun waits for the ranks to finish a stop (checkpoint, outcome) after it forwards a SIGTERM.
SHUTDOWN_SECONDS = 60


def world_size() -> int:
    """How many processes torchrun started for this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in the run (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


class GroupLost(Exception):
    """Another rank is gone (killed, crashed): this rank leaves without recording an outcome, torchrun ends the
    group, and the job's worker sees a dead trainer (the job is requeued and resumes from its last checkpoint)."""


def die_with_parent() -> None:
    """For a rank: ask Linux to SIGKILL this process when its parent exits (prctl PR_SET_PDEATHSIG); Linux only."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(3)


def launch_command(nproc: int, module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` on `nproc` processes under PyTorch's launcher, through
    `python -m tunelab.train.launch`, which ties the launcher's life to its parent's."""
    return [sys.executable, "-m", "tunelab.train.launch", str(nproc), module, *args]


def launch_environment(env: dict[str, str], nproc: int) -> dict[str, str]:
    """The launcher's environment: each rank gets cores // N threads unless the user chose OMP_NUM_THREADS
    (torchrun would otherwise give every rank 1), and torchrun waits SHUTDOWN_SECONDS for a graceful stop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = {} if "OMP_NUM_THREADS" in env else {"OMP_NUM_THREADS": str(max(1, cores // nproc))}
    return {**env, **threads, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_SECONDS)}


def _run_launcher(nproc: int, module: str, args: list[str]) -> None:
    """Run torchrun's own entry point in this process, which leaves as soon as its parent is gone: the ranks,
    whose parent-death signal is set, are killed with it."""
    exit_with_parent()
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(["--standalone", f"--nproc_per_node={nproc}", "--max-restarts=0", "-m", module, *args])
    except SignalException as exc:  # a Ctrl-C or a SIGTERM, forwarded to the ranks, which have stopped
        sys.exit(128 + int(exc.sigval))


def exit_with_parent() -> None:
    """Leave at once when the process that started this one is gone (a server killed with kill -9).
    Polled, not prctl: the death signal follows the parent *thread*, and the worker's thread that started the
    process ends before the run does when the server shuts down gracefully."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    _run_launcher(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
