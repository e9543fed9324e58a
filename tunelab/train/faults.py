"""Which resource a failed training run ran out of: memory or disk space, told by the exception's type.

Used where a failure becomes a job's error code (`out_of_memory`, `disk_full`); nothing here imports torch, so it
still works when memory ran out before torch could load.
"""

from __future__ import annotations

import errno
import sqlite3
import sys


def out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA), or PyTorch's CPU allocator failing, which raises a
    plain RuntimeError naming the failed allocation."""
    torch = sys.modules.get("torch")
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def disk_full(exc: BaseException) -> bool:
    """A write that found no space: an OSError, SQLite's "database or disk is full", or safetensors' error,
    which names the errno in its text."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return type(exc).__name__ == "SafetensorError" and f"(os error {errno.ENOSPC})" in str(exc)
