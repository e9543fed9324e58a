"""Write an export beside its destination and rename it into place, so the destination appears whole or not at
all: any error, a full disk included, removes the partial directory and propagates."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InvalidRequest
from ..store.blobs import fsync_path


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh sibling directory of `out` to write into; renamed to `out` when the block ends without error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        yield work
        for path in work.rglob("*"):  # the files on disk, then the rename: a crash after it leaves a whole export
            if path.is_file():
                fsync_path(path)
        if out.exists():  # created by someone else while we wrote: never replace it
            raise InvalidRequest(f"{out} appeared while the export was written; nothing was replaced", param="out")
        os.rename(work, out)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)  # also gives back the space a write that ran out of it took
        if _disk_full_in_disguise(exc):
            raise OSError(errno.ENOSPC, f"no space left on the device of {out.parent}: the export was removed; free "
                          "some space and export again") from exc
        raise


def _disk_full_in_disguise(exc: BaseException) -> bool:
    """safetensors reports a full disk as its own error type, naming the errno only in its text; callers expect
    the OSError (ENOSPC) every other write raises."""
    return type(exc).__name__ == "SafetensorError" and f"(os error {errno.ENOSPC})" in str(exc)

