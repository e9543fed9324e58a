"""Fine-tuning jobs as the API sees them: create (checked up front), read, page through events and checkpoints,
and the client's cancel / pause / resume.

The worker (`worker.py`) moves jobs along; this module only records what clients ask for.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from ..api.schemas import JobCreate
from ..errors import InvalidRequest, NotFound
from ..models.registry import Registry
from ..store.blobs import new_id
from ..store.db import Database
from ..store.files import Files
from ..store.idempotency import forget, remember
from .events import add_event
from .queue import FINAL, Queue

SHOWN = ("n_epochs", "batch_size", "learning_rate_multiplier")


class Jobs:
    def __init__(self, db: Database, queue: Queue, files: Files, registry: Registry, runs_root: Path, owner: str):
        self.db = db
        self.queue = queue
        self.files = files
        self.registry = registry
        self.runs_root = runs_root
        self.owner = owner

    def create(self, body: JobCreate, idempotency_key: str | None = None) -> dict:
        """Check the request (model, files, method) and record the job in `validating_files`."""
        start = self.registry.training_start(body.model)
        if body.method and body.method.type != "supervised":
            raise InvalidRequest(f"the {body.method.type!r} method is not available: tunelab trains supervised "
                                 "fine-tunes", param="method.type")
        if body.integrations:
            raise InvalidRequest("integrations (such as Weights & Biases) are not available in tunelab; the "
                                 "job's events and results.csv carry its metrics", param="integrations")
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is None:
                continue
            try:
                found = self.files.get(file_id)
            except NotFound:
                raise InvalidRequest(f"the {param.replace('_', ' ')} {file_id!r} does not exist", param=param) from None
            if found["purpose"] != "fine-tune":
                raise InvalidRequest(f"the file {file_id} has purpose {found['purpose']!r}; fine-tuning needs a "
                                     "file uploaded with purpose 'fine-tune'", param=param)
        if body.validation_file and body.validation_file == body.training_file:
            raise InvalidRequest("the validation file must be different from the training file",
                                 param="validation_file")

        supervised = body.method.supervised if body.method and body.method.supervised else None
        hyper = (supervised.hyperparameters if supervised and supervised.hyperparameters else body.hyperparameters)
        request = {
            "model": body.model, "base": start.base, "training_file": body.training_file,
            "validation_file": body.validation_file, "suffix": body.suffix,
            "seed": body.seed if body.seed is not None else random.SystemRandom().randrange(2**31),
            "hyperparameters": hyper.model_dump() if hyper else {k: "auto" for k in SHOWN},
            "metadata": body.metadata,
        }
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        with self.db.write() as conn:
            while True:  # the model id carries 8 hex digits of the job id: keep them unique
                job_id = new_id("ftjob")
                output = f"ft:{start.base}:{self.owner}:{body.suffix or ''}:{job_id[-8:]}"
                if not conn.execute("SELECT 1 FROM jobs WHERE output_model = ?", (output,)).fetchone():
                    break
            if idempotency_key:
                first = remember(conn, "fine_tuning.jobs", idempotency_key, fingerprint, job_id)
                if first != job_id:
                    return self.get(first, conn)
            self.queue.add(job_id, request, conn=conn, run_dir=str(self.runs_root / job_id), output_model=output)
            add_event(conn, job_id, f"Created fine-tuning job: {job_id}")
            files = f"training file: {body.training_file}" + (
                f" and validation file: {body.validation_file}" if body.validation_file else "")
            add_event(conn, job_id, f"Validating {files}")
            return self.get(job_id, conn)

    def get(self, job_id: str, conn=None) -> dict:
        conn = conn or self.db.connection()
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
        return job_object(row, self.owner)

    def delete(self, job_id: str) -> dict:
        """Remove a finished job: its record, events, checkpoints and run directory (tunelab's own route; the
        cloud keeps jobs forever). Its fine-tuned model goes first (DELETE /v1/models/…), and no checkpoint of it
        may be deployed; its result file stays a file."""
        with self.db.write() as conn:
            job = self.get(job_id, conn)
            if job["status"] not in FINAL:
                raise InvalidRequest(f"fine-tuning job {job_id} is {job['status']}; cancel it or wait for it to "
                                     "finish first", param="fine_tuning_job_id")
            model = conn.execute("SELECT id FROM models WHERE job_id = ?", (job_id,)).fetchone()
            if model:
                raise InvalidRequest(f"the job's fine-tuned model {model['id']} still exists; delete it first",
                                     param="fine_tuning_job_id")
            deployed = conn.execute("SELECT d.name, d.model FROM deployments d JOIN checkpoints c ON c.model = "
                                    "d.model WHERE c.job_id = ?", (job_id,)).fetchone()
            if deployed:
                raise InvalidRequest(f"checkpoint {deployed['model']} is deployed as {deployed['name']!r}; delete "
                                     "the deployment first", param="fine_tuning_job_id")
            row = conn.execute("SELECT run_dir FROM jobs WHERE id = ?", (job_id,)).fetchone()
            for table in ("checkpoints", "job_events"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            forget(conn, job_id)
        if row["run_dir"]:  # after the commit: the write lock is not held while files go
            run_dir = Path(row["run_dir"])
            shutil.rmtree(run_dir, ignore_errors=True)
            (run_dir.parent / f"{job_id}.log").unlink(missing_ok=True)
        return {"id": job_id, "object": "fine_tuning.job", "deleted": True}

    def list(self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None) -> dict:
        where, params = [], []
        if after:
            where.append("rowid < ?")
            params.append(self._rowid("jobs", after, "after"))
        for key, value in (metadata or {}).items():
            where.append("EXISTS (SELECT 1 FROM json_each(request, '$.metadata') WHERE key = ? AND value = ?)")
            params += [key, value]
        rows = self.db.query(f"SELECT * FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "
                             "ORDER BY rowid DESC LIMIT ?", (*params, limit + 1))
        return {"object": "list", "data": [job_object(r, self.owner) for r in rows[:limit]],
                "has_more": len(rows) > limit}

    def events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> dict:
        self.get(job_id)
        where, params = "job_id = ?", [job_id]
        if after:
            rows = self.db.query("SELECT seq FROM job_events WHERE id = ? AND job_id = ?", (after, job_id))
            if not rows:
                raise InvalidRequest(f"no event {after!r} in job {job_id} to page after", param="after")
            where += " AND seq < ?"
            params.append(rows[0]["seq"])
        rows = self.db.query(f"SELECT * FROM job_events WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1))
        data = [{"object": "fine_tuning.job.event", "id": r["id"], "created_at": r["created_at"], "level": r["level"],
                 "message": r["message"], "type": r["type"], "data": json.loads(r["data"]) if r["data"] else {}}
                for r in rows[:limit]]
        return {"object": "list", "data": data, "has_more": len(rows) > limit}

    def checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> dict:
        self.get(job_id)
        where, params = "job_id = ?", [job_id]
        if after:
            rows = self.db.query("SELECT step FROM checkpoints WHERE id = ? AND job_id = ?", (after, job_id))
            if not rows:
                raise InvalidRequest(f"no checkpoint {after!r} in job {job_id} to page after", param="after")
            where += " AND step < ?"
            params.append(rows[0]["step"])
        rows = self.db.query(f"SELECT * FROM checkpoints WHERE {where} ORDER BY step DESC LIMIT ?",
                             (*params, limit + 1))
        data = [{"object": "fine_tuning.job.checkpoint", "id": r["id"], "created_at": r["created_at"],
                 "fine_tuned_model_checkpoint": r["model"], "fine_tuning_job_id": job_id, "step_number": r["step"],
                 "metrics": {"step": r["step"], **json.loads(r["metrics"])}} for r in rows[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    def act(self, job_id: str, action: str) -> dict:
        """cancel, pause or resume. A running job is stopped by the worker within seconds; until then the job
        shows the status it is leaving."""
        status = self.queue.request(job_id, action)
        with self.db.write() as conn:
            if status == "running":
                add_event(conn, job_id, {"cancel": "Cancelling the job", "pause": "Pausing the job: a checkpoint "
                                         "is being written"}[action])
            else:
                add_event(conn, job_id, {"cancelled": "The job was cancelled",
                                         "queued": "The job was resumed and is queued"}[status])
        return self.get(job_id)

    def _rowid(self, table: str, object_id: str, param: str) -> int:
        rows = self.db.query(f"SELECT rowid FROM {table} WHERE id = ?", (object_id,))
        if not rows:
            raise InvalidRequest(f"no object {object_id!r} to page after", param=param)
        return rows[0]["rowid"]


def job_object(row, owner: str) -> dict:
    request = json.loads(row["request"])
    resolved = json.loads(row["hyperparameters"]) if row["hyperparameters"] else None
    shown = {k: (resolved or request["hyperparameters"])[k] for k in SHOWN}
    return {
        "object": "fine_tuning.job", "id": row["id"], "model": request["model"], "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "fine_tuned_model": row["output_model"] if row["status"] == "succeeded" else None,
        "organization_id": f"org-{owner}", "result_files": [row["result_file"]] if row["result_file"] else [],
        "status": row["status"], "training_file": request["training_file"],
        "validation_file": request["validation_file"], "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None, "seed": request["seed"],
        "estimated_finish": row["estimated_finish"] if row["status"] == "running" else None,
        "integrations": [], "metadata": request["metadata"], "user_provided_suffix": request["suffix"],
        "hyperparameters": shown, "method": {"type": "supervised", "supervised": {"hyperparameters": shown}},
    }
