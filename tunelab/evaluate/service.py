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
from ..jobs.events import add_event
from .checks import choose
from .compare import Prompt, Spec, compare

MAX_AUTO_PROMPTS = 100  # a comparison attached to a job covers at most this many validation conversations

log = logging.getLogger("tunelab.evaluate")


class Evaluations:
    def __init__(self, db: Database):
        self.db = db
        self._tasks: set[asyncio.Task] = set()  # held so that running comparisons are not garbage-collected
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once it runs

    def after_job(self, svc, job_id: str) -> None:
        """From the worker, when a job's training process has ended: if it succeeded with a validation file (and
        `auto_compare` is on), compare the fine-tune with the model it started from on that file — each
        validation conversation up to its last user turn, the reply it holds as the reference."""
        rows = self.db.query("SELECT status, request, output_model FROM jobs WHERE id = ?", (job_id,))
        if not svc.settings.auto_compare or self.loop is None or not rows or rows[0]["status"] != "succeeded":
            return
        request = json.loads(rows[0]["request"])
        if not request.get("validation_file"):
            return
        prompts = []
        for number, line in enumerate(svc.files.path(request["validation_file"]).read_text(encoding="utf-8")
                                      .splitlines(), 1):
            messages = json.loads(line)["messages"] if line.strip() else []
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last and messages[last - 1].get("role") == "user":
                plain = [{k: m[k] for k in ("role", "content", "name") if k in m} for m in messages[:last]]
                prompts.append({"id": f"line-{number}", "kind": "validation", "messages": plain,
                                "reference": messages[last].get("content")})
        if not prompts:
            return
        body = {"candidates": [request["model"], rows[0]["output_model"]], "prompts": prompts[:MAX_AUTO_PROMPTS],
                "system": None, "seed": 42, "temperature": 0.7, "max_tokens": 256, "checks": None,
                "validation_file": request["validation_file"], "style_file": request["training_file"],
                "job_id": job_id}

        async def start() -> dict:
            return self.create(svc, body)

        created = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=60)
        with self.db.write() as conn:
            add_event(conn, job_id, f"Comparing {body['candidates'][1]} with {body['candidates'][0]} on the "
                      f"validation file: evaluation {created['id']} (GET /v1/evaluations/{created['id']})")

    def recover(self) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE evaluations SET status = 'failed', error = 'the server stopped while it ran; "
                         "start it again', finished_at = ? WHERE status = 'running'", (int(time.time()),))

    def create(self, svc, body: dict) -> dict:
        """Check the request, resolve its files, store it and start it (call from the event loop)."""
        for name in body["candidates"]:
            if svc.deployments.serving(name) is None:
                svc.registry.get(name)  # raises model_not_found naming the id
        if len(set(body["candidates"])) != len(body["candidates"]):
            raise InvalidRequest("each candidate may appear once", param="candidates")
        body = {**body, **self._files_of_fine_tunes(svc, body)}
        paths = {key: svc.files.path(body[key]) for key in ("validation_file", "style_file") if body.get(key)}
        choose(body.get("checks"), svc.settings.checks)  # an unknown check or one that does not load: a 400
        spec = Spec(candidates=body["candidates"], system=body.get("system"), seed=body["seed"],
                    temperature=body["temperature"], max_tokens=body["max_tokens"], checks=body.get("checks"),
                    prompts=[Prompt(p.get("id") or f"p{i}", p["messages"], p.get("kind") or "general",
                                    p.get("reference")) for i, p in enumerate(body["prompts"])],
                    validation=paths.get("validation_file"), style=paths.get("style_file"),
                    parallel=body.get("parallel") or 1)
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

    def list(self, limit: int = 20, job_id: str | None = None) -> dict:
        if job_id:
            rows = self.db.query("SELECT * FROM evaluations WHERE json_extract(request, '$.job_id') = ? ORDER BY "
                                 "created_at DESC, id LIMIT ?", (job_id, limit))
        else:
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
