"""Uploaded and produced files: rows in the `files` table, bytes in the blob store under the generated id.

The API streams an upload into `writer()` and hands it to `add()`, which commits the bytes and the row together
(or neither); a job's `results.csv` goes in through `add_path()`. Deleting removes the row and the bytes; whether
a job still needs the file is the caller's rule (the jobs own that knowledge). This module owns the `files` table.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from ..crashpoints import crash_point
from .blobs import BlobStore, BlobWriter, new_id
from .db import Database
from .idempotency import forget, remember

UPLOAD_PURPOSES = ("fine-tune", "evals")  # training data, and the data of eval runs


class Files:
    def __init__(self, db: Database, root: Path, max_bytes: int):
        self.db = db
        self.blobs = BlobStore(root)
        self.max_bytes = max_bytes

    def writer(self) -> tuple[str, BlobWriter]:
        """A new file id and a writer for its bytes (capped at `max_bytes`)."""
        file_id = new_id("file")
        return file_id, self.blobs.writer(file_id, self.max_bytes)

    def add(self, file_id: str, writer: BlobWriter, filename: str, purpose: str,
            idempotency_key: str | None = None, then=None) -> dict:
        """Make an uploaded file visible: commit its bytes and its row together.

        With an `idempotency_key`, a repeat of the same upload returns the first file and keeps no second copy.
        `then(conn, record)` runs inside the same transaction (an upload marks itself completed there).
        """
        filename = clean_filename(filename)
        writer.commit()
        crash_point("upload.before_row")
        fingerprint = hashlib.sha256(f"{purpose}\0{filename}\0{writer.sha256}".encode()).hexdigest()
        try:
            with self.db.write() as conn:
                if idempotency_key:
                    first = remember(conn, "files", idempotency_key, fingerprint, file_id)
                    if first != file_id:  # a retry: keep the first upload, drop these bytes
                        self.blobs.delete(file_id)
                        return self._row(conn, first)
                conn.execute("INSERT INTO files (id, filename, purpose, bytes, sha256, status, created_at) "
                             "VALUES (?, ?, ?, ?, ?, 'processed', ?)",
                             (file_id, filename, purpose, writer.size, writer.sha256, int(time.time())))
                record = self._row(conn, file_id)
                if then is not None:
                    then(conn, record)
                return record
        except BaseException:
            self.blobs.delete(file_id)
            raise

    def add_path(self, path: Path, filename: str, purpose: str, conn=None) -> str:
        """Store a copy of a file the service produced (a job's results.csv); returns its id.

        With `conn`, the row joins the caller's open transaction (the job's outcome is recorded with it).
        """
        file_id, writer = self.writer()
        with writer, path.open("rb") as source:
            while chunk := source.read(1 << 20):
                writer.write(chunk)
            writer.commit()
        row = (file_id, clean_filename(filename), purpose, writer.size, writer.sha256, int(time.time()))
        sql = ("INSERT INTO files (id, filename, purpose, bytes, sha256, status, created_at) "
               "VALUES (?, ?, ?, ?, ?, 'processed', ?)")
        if conn is not None:
            conn.execute(sql, row)
        else:
            with self.db.write() as own:
                own.execute(sql, row)
        return file_id

    def sweep(self) -> None:
        """At start-up, before any request: remove half-written uploads and bytes whose row never committed."""
        self.blobs.sweep()
        if self.blobs.root.is_dir():
            known = {r["id"] for r in self.db.query("SELECT id FROM files")}
            for path in self.blobs.root.iterdir():
                if path.name.startswith("file-") and path.name not in known:
                    path.unlink(missing_ok=True)

    def get(self, file_id: str, conn=None) -> dict:
        return self._row(conn or self.db.connection(), file_id)

    def path(self, file_id: str) -> Path:
        self.get(file_id)
        return self.blobs.path(file_id)

    def list(self, *, purpose: str | None = None, limit: int = 10_000, order: str = "desc",
             after: str | None = None) -> tuple[list[dict], bool]:
        """A cursor page, newest first by default, and whether more follow; `after` is the id of the last file of
        the previous page."""
        where, params = [], []
        if purpose:
            where.append("purpose = ?")
            params.append(purpose)
        if after:
            cursor = self.db.query("SELECT rowid FROM files WHERE id = ?", (after,))
            if not cursor:
                raise InvalidRequest(f"no file {after!r} to page after", param="after")
            where.append("rowid < ?" if order == "desc" else "rowid > ?")
            params.append(cursor[0]["rowid"])
        sql = (f"SELECT * FROM files {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY rowid {'DESC' if order == 'desc' else 'ASC'} LIMIT ?")
        rows = self.db.query(sql, (*params, limit + 1))
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def training_data(self, file_id: str, param: str) -> dict:
        """The file `file_id`, which must be training data (purpose `fine-tune`); errors name `param`."""
        try:
            found = self.get(file_id)
        except NotFound:
            raise NotFound(f"no file with id {file_id!r}", param=param) from None
        if found["purpose"] != "fine-tune":
            raise InvalidRequest(f"file {file_id} has purpose {found['purpose']!r}; the pre-flight report checks "
                                 "training data (purpose 'fine-tune')", param=param)
        return found

    def delete(self, file_id: str, conn) -> None:
        """Inside the caller's write transaction: the row, its idempotency records and the bytes."""
        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        forget(conn, file_id)
        self.blobs.delete(file_id)  # inside the transaction: if this fails, the row stays

    def _row(self, conn, file_id: str) -> dict:
        row = conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise NotFound(f"no file with id {file_id!r}", param="file_id")
        return _record(row)


def check_new_file(purpose: str | None, filename: str | None, size: int, *, file_param: str = "file",
                   size_param: str = "file") -> None:
    """The rules every new training file meets, however it arrives (one request or an upload in parts): a purpose
    tunelab accepts, a `.jsonl` name, at least one byte. Errors name the caller's parameters."""
    if not purpose:
        raise InvalidRequest("missing required parameter 'purpose' (use 'fine-tune')", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r} is not supported; tunelab accepts 'fine-tune' and 'evals'",
                             param="purpose")
    if filename is None:
        raise InvalidRequest(f"missing required parameter {file_param!r}", param=file_param)
    if not filename.lower().endswith(".jsonl"):
        raise InvalidRequest(f"fine-tuning files must be JSONL with a .jsonl name; got {filename!r}",
                             param=file_param)
    if size == 0:
        raise InvalidRequest("the file is empty", param=size_param)


def _record(row) -> dict:
    return {key: row[key] for key in ("id", "filename", "purpose", "bytes", "sha256", "status", "created_at")}


def clean_filename(name: str) -> str:
    """The name a client sent, as metadata only: no directories, no control characters, at most 255 chars.
    Look-alikes (full-width slashes and dots, the two-dot leader) are folded first (NFKC), so none survives."""
    name = re.split(r"[\\/]", unicodedata.normalize("NFKC", name or ""))[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip().lstrip(".")
    return name[:255] or "upload.jsonl"
