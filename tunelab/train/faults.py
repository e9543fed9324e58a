"""Which resource a failed training run ran out of: memory or disk space, told by the exception's type.

Used where a failure becomes a job's error code (`out_of_memory`, `disk_full`); nothing here imports torch, so it
still works when memory ran out before torch could load.
"""

from __future__ import annotations

import errno
import resource
import sqlite3
import sys


def out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA), or PyTorch's CPU allocator failing, which raises a
    plain RuntimeError naming the failed allocation. oneDNN reports a failed allocation only as "could not create a
    primitive", without its cause: under an address-space limit that is taken as memory running out."""
    torch = sys.modules.get("torch")
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return "can't allocate memory" in text or ("could not create a primitive" in text and _address_space_limited())


def _address_space_limited() -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def disk_full(exc: BaseException) -> bool:
    """A write that found no space: an OSError, SQLite's "database or disk is full", or safetensors' error,
    which names the errno in its text."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return type(exc).__name__ == "SafetensorError" and f"(os error {errno.ENOSPC})" in str(exc)
