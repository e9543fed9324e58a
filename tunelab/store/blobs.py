"""Blob storage on disk: files stored under a generated id only, written whole or not at all, with a size cap.

A `BlobWriter` takes the bytes as they arrive (an upload is never held whole in memory), counts them against the
cap, hashes them, and on `commit` fsyncs and renames the temporary file into place. Anything that stops early —
the cap, a client that disconnects, an error — ends in `abort`, which leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from ..crashpoints import crash_point
from ..errors import TunelabError


class FileTooLarge(TunelabError):
    code = "file_too_large"
    status = 413


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, blob_id: str) -> Path:
        if not blob_id or "/" in blob_id or "\\" in blob_id or blob_id.startswith("."):
            raise ValueError(f"not a blob id: {blob_id!r}")  # ids are generated; anything else is a bug
        return self.root / blob_id

    def writer(self, blob_id: str, limit: int) -> "BlobWriter":
        self.root.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self.path(blob_id), limit)

    def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove temporary files of writes that never finished (a crash mid-upload)."""
        if self.root.is_dir():
            for leftover in self.root.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)


class BlobWriter:
    """Receives a blob's bytes; `commit()` makes it visible, `abort()` (or leaving uncommitted) removes it."""

    def __init__(self, final: Path, limit: int):
        self.final = final
        self.limit = limit
        self.size = 0
        self.committed = False
        self._hash = hashlib.sha256()
        self._tmp = final.with_name(f".tmp-{final.name}")
        self._file = self._tmp.open("wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise FileTooLarge(f"the file is larger than the {self.limit:,}-byte limit", param="file")
        self._hash.update(chunk)
        self._file.write(chunk)
        crash_point("upload.write")

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.final)
        self.committed = True

    def abort(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()  # flushes what is buffered: on a full disk that fails too
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if not self.committed:
            self.abort()


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: the names in it) to the disk before a rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
