"""Comparison runs as the API sees them: created, run in the background on the server's event loop, stored with
their progress and report. A run the server was stopped in the middle of is marked failed at the next start."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from ..errors import InvalidRequest, NotFound
from ..store.db import Database
from .compare import Prompt, Spec, compare

log = logging.getLogger("tunelab.evaluate")


class Evaluations:
    def __init__(self, db: Database):
        self.db = db
        self._tasks: set[asyncio.Task] = set()  # held so that running comparisons are not garbage-collected

    def recover(self) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'failed', error = 'the server stopped while it ran; "
                         "start it again', finished_at = ? WHERE status = 'running'", (int(time.time()),))

    def create(self, svc, body: dict) -> dict:
        """Check the request, resolve its files, store it and start it (call from the event loop)."""
        for i, name in enumerate(body["candidates"]):
            if svc.deployments.serving(name) is None:
                svc.registry.get(name)  # raises model_not_found naming the id
        if len(set(body["candidates"])) != len(body["candidates"]):
            raise InvalidRequest("each candidate may appear once", param="candidates")
        body = {**body, **self._files_of_fine_tunes(svc, body)}
        paths = {key: svc.files.path(body[key]) for key in ("validation_file", "style_file") if body.get(key)}
        if body.get("checks"):
            from . import checks

            unknown = [name for name in body["checks"] if name not in {c.name for c in checks.checks()}]
            if unknown:
                raise InvalidRequest(f"no check named {unknown[0]!r}; known checks: "
                                     f"{', '.join(c.name for c in checks.checks())}", param="checks")
        spec = Spec(candidates=body["candidates"], system=body.get("system"), seed=body["seed"],
                    temperature=body["temperature"], max_tokens=body["max_tokens"], checks=body.get("checks"),
                    prompts=[Prompt(p.get("id") or f"p{i}", p["messages"], p.get("kind") or "travel",
                                    p.get("reference")) for i, p in enumerate(body["prompts"])],
                    validation=paths.get("validation_file"), style=paths.get("style_file"))
        evaluation_id = f"eval-{secrets.token_hex(8)}"
        total = len(spec.prompts) * len(spec.candidates) + (len(spec.candidates) if spec.validation else 0)
        with self.db.write() as conn:
            conn.execute("INSERT INTO evaluations (id, status, request, total, created_at) VALUES (?, 'running', ?, "
                         "?, ?)", (evaluation_id, json.dumps(body), total, int(time.time())))
        task = asyncio.get_running_loop().create_task(self._run(svc, evaluation_id, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self.get(evaluation_id)

    async def _run(self, svc, evaluation_id: str, spec: Spec) -> None:
        def progress(done: int, total: int) -> None:
            with self.db.write() as conn:
                conn.execute("UPDATE evaluations SET done = ? WHERE id = ?", (done, evaluation_id))

        try:
            report = await compare(svc, spec, progress)
        except Exception as exc:
            log.exception("comparison %s failed", evaluation_id)
            with self.db.write() as conn:
                conn.execute("UPDATE evaluations SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                             (f"{type(exc).__name__}: {exc}", int(time.time()), evaluation_id))
            return
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'completed', report = ?, finished_at = ? WHERE id = ?",
                         (json.dumps(report), int(time.time()), evaluation_id))

    def get(self, evaluation_id: str, *, with_report: bool = True) -> dict:
        rows = self.db.query("SELECT * FROM evaluations WHERE id = ?", (evaluation_id,))
        if not rows:
            raise NotFound(f"no evaluation {evaluation_id!r}", param="evaluation_id")
        return _object(rows[0], with_report)

    def list(self, limit: int = 20) -> dict:
        rows = self.db.query("SELECT * FROM evaluations ORDER BY created_at DESC, id LIMIT ?", (limit,))
        return {"object": "list", "data": [_object(r, False) for r in rows], "has_more": False}

    def delete(self, evaluation_id: str) -> dict:
        found = self.get(evaluation_id, with_report=False)
        if found["status"] == "running":
            raise InvalidRequest(f"the evaluation {evaluation_id} is still running", param="evaluation_id")
        with self.db.write() as conn:
            conn.execute("DELETE FROM evaluations WHERE id = ?", (evaluation_id,))
        return {"id": evaluation_id, "object": "evaluation.deleted", "deleted": True}

    @staticmethod
    def _files_of_fine_tunes(svc, body: dict) -> dict:
        """Unless given, the style reference is the training file, and the validation file the job's, of the
        first fine-tuned candidate that has them."""
        found = {}
        for name in body["candidates"]:
            served = svc.deployments.serving(name)
            model = served[0]["model"] if served else name
            rows = svc.db.query("SELECT j.request FROM models m JOIN jobs j ON j.id = m.job_id WHERE m.id = ?",
                                (model.split(":ckpt-step-")[0],))
            if rows:
                request = json.loads(rows[0]["request"])
                found.setdefault("style_file", request.get("training_file"))
                found.setdefault("validation_file", request.get("validation_file"))
        return {key: body.get(key) or found.get(key) for key in ("style_file", "validation_file")}


def _object(row, with_report: bool) -> dict:
    request = json.loads(row["request"])
    found = {"id": row["id"], "object": "evaluation", "status": row["status"], "created_at": row["created_at"],
             "finished_at": row["finished_at"], "candidates": request["candidates"],
             "progress": {"done": row["done"], "total": row["total"]},
             "error": row["error"], "request": request}
    if with_report:
        found["report"] = json.loads(row["report"]) if row["report"] else None
    return found
