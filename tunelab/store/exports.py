"""Exports as they are stored: a request `queued`, then `running` with its progress, then `succeeded` with the
files it wrote and their sizes, or `failed` with a code and a message for a person.

Each export's files live in their own directory, `<root>/<export id>/`, which the export writes beside and
renames in whole; a row that is not `succeeded` has no directory. An export the server stopped in the middle of
is marked failed at the next start and whatever it left on disk is removed. Deleting an export removes its files.
This module owns the `exports` table; records come back as plain dicts, which the API shapes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from .blobs import new_id
from .db import Database

UNFINISHED = ("queued", "running")
STOPPED = "the server stopped during the export; start it again"


class Exports:
    def __init__(self, db: Database, root: Path):
        self.db = db
        self.root = Path(root)

    def directory(self, export_id: str) -> Path:
        """Where the export's files are (once it has succeeded)."""
        if not export_id.startswith("export-") or "/" in export_id or "\\" in export_id or ".." in export_id:
            raise NotFound(f"no export with id {export_id!r}", param="export_id")
        return self.root / export_id

    def add(self, model: str, format: str, quant: str | None, ollama: bool, system: str | None) -> dict:
        export_id = new_id("export")
        with self.db.write() as conn:
            conn.execute("INSERT INTO exports (id, model, format, quant, ollama, system, status, stage, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, 'queued', 'waiting for the exports before it', ?)",
                         (export_id, model, format, quant, int(ollama), system, int(time.time())))
            return self._row(conn, export_id)

    def start(self, export_id: str) -> bool:
        """Move a queued export to running; False when it is no longer queued (the server is stopping)."""
        with self.db.write() as conn:
            changed = conn.execute("UPDATE exports SET status = 'running', stage = 'starting' WHERE id = ? AND "
                                   "status = 'queued'", (export_id,)).rowcount
        return changed == 1

    def progress(self, export_id: str, fraction: float, stage: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE exports SET progress = ?, stage = ? WHERE id = ? AND status = 'running'",
                         (min(1.0, max(0.0, float(fraction))), stage[:500], export_id))

    def succeeded(self, export_id: str, files: list[dict]) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE exports SET status = 'succeeded', progress = 1, stage = 'done', files = ?, "
                         "finished_at = ? WHERE id = ?",
                         (json.dumps([{"name": f["name"], "bytes": int(f["bytes"])} for f in files]),
                          int(time.time()), export_id))

    def failed(self, export_id: str, code: str, message: str) -> None:
        """Record why the export failed; whatever it wrote goes."""
        with self.db.write() as conn:
            conn.execute("UPDATE exports SET status = 'failed', stage = 'failed', error_code = ?, error_message = ?, "
                         "finished_at = ? WHERE id = ?", (code, message, int(time.time()), export_id))
        shutil.rmtree(self.directory(export_id), ignore_errors=True)

    def recover(self) -> None:
        """At start-up: exports the server stopped in the middle of are failed, and anything on disk that is not
        a succeeded export's directory (a half-written one, a temporary one beside it) is removed."""
        with self.db.write() as conn:
            conn.execute("UPDATE exports SET status = 'failed', stage = 'failed', error_code = 'server_stopped', "
                         "error_message = ?, finished_at = ? WHERE status IN ('queued', 'running')",
                         (STOPPED, int(time.time())))
        if not self.root.is_dir():
            return
        kept = {r["id"] for r in self.db.query("SELECT id FROM exports WHERE status = 'succeeded'")}
        for path in self.root.iterdir():
            if path.name in kept:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def unfinished_of(self, conn, model_id: str) -> str | None:
        """Inside the caller's transaction: a queued or running export that reads the model, if any."""
        row = conn.execute("SELECT id FROM exports WHERE model = ? AND status IN ('queued', 'running') LIMIT 1",
                           (model_id,)).fetchone()
        return row["id"] if row else None

    def get(self, export_id: str) -> dict:
        return self._row(self.db.connection(), export_id)

    def file(self, export_id: str, name: str) -> Path:
        """One file of a succeeded export; `name` must be one the export lists."""
        found = self.get(export_id)
        if name not in {f["name"] for f in found["files"]}:
            raise NotFound(f"export {export_id} has no file {name!r}", param="name")
        directory = self.directory(export_id).resolve()
        path = (directory / name).resolve()
        if not path.is_relative_to(directory) or not path.is_file():  # listed, yet never outside the export
            raise NotFound(f"export {export_id} has no file {name!r}", param="name")
        return path

    def list(self, *, limit: int = 20, after: str | None = None, model: str | None = None) -> tuple[list[dict], bool]:
        """Newest first, after the export `after` (the last id of the previous page), and whether more follow."""
        where, params = [], []
        if model:
            where.append("model = ?")
            params.append(model)
        if after:
            cursor = self.db.query("SELECT rowid FROM exports WHERE id = ?", (after,))
            if not cursor:
                raise InvalidRequest(f"no export {after!r} to page after", param="after")
            where.append("rowid < ?")
            params.append(cursor[0]["rowid"])
        rows = self.db.query(f"SELECT * FROM exports {'WHERE ' + ' AND '.join(where) if where else ''} "
                             "ORDER BY rowid DESC LIMIT ?", (*params, limit + 1))
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def delete(self, export_id: str) -> None:
        """Forget a finished export and remove its files; one still queued or running is refused."""
        with self.db.write() as conn:
            found = self._row(conn, export_id)
            if found["status"] in UNFINISHED:
                raise InvalidRequest(f"export {export_id} is {found['status']}; delete it once it has finished",
                                     param="export_id")
            conn.execute("DELETE FROM exports WHERE id = ?", (export_id,))
        shutil.rmtree(self.directory(export_id), ignore_errors=True)

    def _row(self, conn, export_id: str) -> dict:
        row = conn.execute("SELECT * FROM exports WHERE id = ?", (export_id,)).fetchone()
        if row is None:
            raise NotFound(f"no export with id {export_id!r}", param="export_id")
        return _record(row)


def _record(row) -> dict:
    found = dict(row)
    found["ollama"] = bool(found["ollama"])
    found["files"] = json.loads(found["files"]) if found["files"] else []
    return found
