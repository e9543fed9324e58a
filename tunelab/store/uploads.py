"""Uploads in parts (OpenAI's Uploads API): a file declared up front, its parts streamed to disk one request each,
then assembled in the order the client names into an ordinary file.

Each part's bytes go straight to `uploads/<upload id>/<part id>` (written whole or not at all, like every blob)
and never exceed what the upload declared. `complete` checks the listed parts add up to the declared size and,
when given, their MD5, assembles them into a new file beside its final place and renames it in, and records the
file and the upload's completion in one transaction. A wrong size or checksum cancels the upload: its parts are
discarded and no file is made. This module owns the `uploads` and `upload_parts` tables.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import time
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from .blobs import BlobStore, BlobWriter, FileTooLarge
from .db import Database
from .files import Files, check_new_file, clean_filename

PART_MAX_BYTES = 64 * 1024 * 1024
LIFETIME_SECONDS = 3600  # an upload not completed within the hour expires, as OpenAI's do
MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class UploadClosed(InvalidRequest):
    code = "upload_not_pending"


class Uploads:
    def __init__(self, db: Database, root: Path, files: Files):
        self.db = db
        self.root = Path(root)
        self.files = files

    def create(self, filename: str, purpose: str, size: int, mime_type: str) -> dict:
        """A pending upload of `size` bytes (at most the largest file the service accepts)."""
        check_new_file(purpose, filename, size, file_param="filename", size_param="bytes")
        if size > self.files.max_bytes:
            raise InvalidRequest(f"bytes is {size:,}, more than the {self.files.max_bytes:,}-byte limit on a file",
                                 param="bytes")
        upload_id = f"upload_{secrets.token_hex(12)}"
        now = int(time.time())
        with self.db.write() as conn:
            conn.execute("INSERT INTO uploads (id, filename, purpose, bytes, mime_type, status, created_at, "
                         "expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                         (upload_id, clean_filename(filename), purpose, size, mime_type, now,
                          now + LIFETIME_SECONDS))
            return self._row(conn, upload_id)

    def part_writer(self, upload_id: str) -> tuple[str, BlobWriter]:
        """A new part id and a writer for its bytes, capped at a part's limit and at the declared size."""
        self.expire()
        with self.db.write() as conn:
            upload = self._pending(conn, upload_id)
        part_id = f"part_{secrets.token_hex(12)}"
        cap = min(PART_MAX_BYTES, upload["bytes"])
        return part_id, BlobStore(self.root / upload_id).writer(part_id, cap)

    def add_part(self, upload_id: str, part_id: str, writer: BlobWriter) -> dict:
        """Keep a received part: its bytes and its row together, unless all parts would pass the declared size."""
        if writer.size == 0:
            raise InvalidRequest("the part is empty", param="data")
        try:
            writer.commit()
        except FileNotFoundError:  # the upload was cancelled (its folder removed) while this part arrived
            raise UploadClosed(f"upload {upload_id} ended while this part arrived", param="upload_id") from None
        try:
            with self.db.write() as conn:
                upload = self._pending(conn, upload_id)
                stored = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = ?",
                                      (upload_id,)).fetchone()[0]
                if stored + writer.size > upload["bytes"]:
                    raise FileTooLarge(f"the parts would add up to {stored + writer.size:,} bytes, more than the "
                                       f"{upload['bytes']:,} bytes the upload declared", param="data")
                now = int(time.time())
                conn.execute("INSERT INTO upload_parts (id, upload_id, bytes, created_at) VALUES (?, ?, ?, ?)",
                             (part_id, upload_id, writer.size, now))
                return {"id": part_id, "upload_id": upload_id, "created_at": now}
        except BaseException:
            writer.final.unlink(missing_ok=True)
            raise

    def complete(self, upload_id: str, part_ids: list[str], md5: str | None = None) -> dict:
        """Assemble the parts, in the order of `part_ids`, into a new file; the upload, completed, with its file."""
        if md5 is not None and not MD5.match(md5):
            raise InvalidRequest("md5 must be 32 hexadecimal digits", param="md5")
        if not part_ids:
            raise InvalidRequest("part_ids must list the upload's parts in order", param="part_ids")
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("part_ids lists a part more than once", param="part_ids")
        self.expire()
        with self.db.write() as conn:
            upload = self._pending(conn, upload_id)
            sizes = {r["id"]: r["bytes"] for r in conn.execute(
                "SELECT id, bytes FROM upload_parts WHERE upload_id = ?", (upload_id,))}
        unknown = [p for p in part_ids if p not in sizes]
        if unknown:
            raise InvalidRequest(f"upload {upload_id} has no part {unknown[0]!r}", param="part_ids")
        total = sum(sizes[p] for p in part_ids)
        if total != upload["bytes"]:
            self._close(upload_id, "cancelled")
            raise InvalidRequest(f"the parts listed add up to {total:,} bytes, but the upload declared "
                                 f"{upload['bytes']:,}; the upload is cancelled and its parts discarded",
                                 param="bytes")
        parts = BlobStore(self.root / upload_id)
        file_id, writer = self.files.writer()
        digest = hashlib.md5(usedforsecurity=False)
        with writer:
            for part_id in part_ids:
                try:
                    source = parts.path(part_id).open("rb")
                except FileNotFoundError:  # cancelled (or expired) while we assembled
                    raise UploadClosed(f"upload {upload_id} ended before it was complete",
                                       param="upload_id") from None
                with source:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        writer.write(chunk)
            if md5 is not None and digest.hexdigest() != md5.lower():
                self._close(upload_id, "cancelled")
                raise InvalidRequest(f"the MD5 of the assembled bytes is {digest.hexdigest()}, not {md5}; the "
                                     "upload is cancelled and its parts discarded", param="md5")

            def completed(conn, record):  # in the file's transaction: both are recorded, or neither
                self._pending(conn, upload_id)
                conn.execute("UPDATE uploads SET status = 'completed', file_id = ? WHERE id = ?",
                             (record["id"], upload_id))

            file = self.files.add(file_id, writer, upload["filename"], upload["purpose"], then=completed)
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
        return {**self.get(upload_id), "file": file}

    def cancel(self, upload_id: str) -> dict:
        """Cancel a pending upload and discard its parts."""
        self.expire()
        with self.db.write() as conn:
            self._pending(conn, upload_id)
        return self._close(upload_id, "cancelled")

    def get(self, upload_id: str) -> dict:
        return self._row(self.db.connection(), upload_id)

    def expire(self) -> None:
        """Uploads past their hour expire; their parts go."""
        with self.db.write() as conn:
            overdue = [r["id"] for r in conn.execute(
                "SELECT id FROM uploads WHERE status = 'pending' AND expires_at <= ?", (int(time.time()),))]
            for upload_id in overdue:
                conn.execute("UPDATE uploads SET status = 'expired' WHERE id = ?", (upload_id,))
                conn.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
        for upload_id in overdue:
            shutil.rmtree(self.root / upload_id, ignore_errors=True)

    def sweep(self) -> None:
        """At start-up: expire overdue uploads, and remove the bytes of parts no pending upload holds (a crash
        mid-part, or between an upload's end and the removal of its parts)."""
        self.expire()
        with self.db.write() as conn:
            conn.execute("DELETE FROM upload_parts WHERE upload_id IN "
                         "(SELECT id FROM uploads WHERE status != 'pending')")
        if not self.root.is_dir():
            return
        pending = {r["id"] for r in self.db.query("SELECT id FROM uploads WHERE status = 'pending'")}
        parts = {r["id"] for r in self.db.query("SELECT id FROM upload_parts")}
        for folder in self.root.iterdir():
            if folder.name not in pending:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for path in folder.iterdir():
                if path.name not in parts:
                    path.unlink(missing_ok=True)

    def _pending(self, conn, upload_id: str) -> dict:
        """Inside a write transaction: the upload, which must still take parts."""
        upload = self._row(conn, upload_id)
        if upload["status"] != "pending":
            raise UploadClosed(f"upload {upload_id} is {upload['status']}; start a new upload", param="upload_id")
        return upload

    def _close(self, upload_id: str, status: str) -> dict:
        """End a pending upload without a file: its parts' rows and bytes go."""
        with self.db.write() as conn:
            conn.execute("UPDATE uploads SET status = ? WHERE id = ? AND status = 'pending'", (status, upload_id))
            conn.execute("DELETE FROM upload_parts WHERE upload_id = ?", (upload_id,))
            record = self._row(conn, upload_id)
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
        return record

    def _row(self, conn, upload_id: str) -> dict:
        row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if row is None:
            raise NotFound(f"no upload with id {upload_id!r}", param="upload_id")
        return dict(row)
