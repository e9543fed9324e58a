"""Comparison runs as they are stored: created `running`, their progress, then `completed` with the report or
`failed` with the cause. A run the server was stopped in the middle of is marked failed at the next start.

This module owns the `evaluations` table; records come back as plain dicts, which the API shapes.
"""

from __future__ import annotations

import json
import time

from ..errors import InvalidRequest, NotFound
from ..store.db import Database


class Runs:
    def __init__(self, db: Database):
        self.db = db

    def recover(self) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'failed', error = 'the server stopped while it ran; "
                         "start it again', finished_at = ? WHERE status = 'running'", (int(time.time()),))

    def add(self, evaluation_id: str, request: dict, total: int) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO evaluations (id, status, request, total, created_at) VALUES (?, 'running', ?, "
                         "?, ?)", (evaluation_id, json.dumps(request), total, int(time.time())))

    def progress(self, evaluation_id: str, done: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET done = ? WHERE id = ?", (done, evaluation_id))

    def failed(self, evaluation_id: str, error: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                         (error, int(time.time()), evaluation_id))

    def completed(self, evaluation_id: str, report: dict) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'completed', report = ?, finished_at = ? WHERE id = ?",
                         (json.dumps(report), int(time.time()), evaluation_id))

    def get(self, evaluation_id: str, *, with_report: bool = True) -> dict:
        rows = self.db.query("SELECT * FROM evaluations WHERE id = ?", (evaluation_id,))
        if not rows:
            raise NotFound(f"no evaluation {evaluation_id!r}", param="evaluation_id")
        return _record(rows[0], with_report)

    def list(self, limit: int = 20, job_id: str | None = None) -> list[dict]:
        if job_id:
            rows = self.db.query("SELECT * FROM evaluations WHERE json_extract(request, '$.job_id') = ? ORDER BY "
                                 "created_at DESC, id LIMIT ?", (job_id, limit))
        else:
            rows = self.db.query("SELECT * FROM evaluations ORDER BY created_at DESC, id LIMIT ?", (limit,))
        return [_record(r, False) for r in rows]

    def delete(self, evaluation_id: str) -> None:
        found = self.get(evaluation_id, with_report=False)
        if found["status"] == "running":
            raise InvalidRequest(f"the evaluation {evaluation_id} is still running", param="evaluation_id")
        with self.db.write() as conn:
            conn.execute("DELETE FROM evaluations WHERE id = ?", (evaluation_id,))


def _record(row, with_report: bool) -> dict:
    found = {**dict(row), "request": json.loads(row["request"])}
    found.pop("report")
    if with_report:
        found["report"] = json.loads(row["report"]) if row["report"] else None
    return found
