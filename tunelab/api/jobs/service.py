"""The fine-tuning service: create a job (checked up front), read jobs, page through their events and checkpoints,
the client's cancel / pause / resume, deletion of a finished job, and the defaults a job gets.

The worker (`jobs/worker.py`) moves jobs along; this service only records what clients ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool

from ...config import Settings
from ...data.validate import FORMATS, detect_format, validate_file
from ...deploy.deployments import Deployments
from ...errors import InvalidRequest, NotFound
from ...jobs import events
from ...jobs.best_checkpoint import recommended_checkpoint
from ...jobs.queue import FINAL, Queue
from ...models.registry import Registry
from ...store.blobs import new_id
from ...store.db import Database
from ...store.files import Files
from ...store.idempotency import forget, remember
from ...train.config import BASE_LEARNING_RATE
from ...train.preflight import auto_hyperparameters
from .protocol import (SHOWN, Checkpoint, CheckpointList, EventList, FineTuningDefaults, FineTuningJob, JobCreate,
                       JobEvent, JobList)

SETTLE_SECONDS = 30  # how long cancel and pause wait for a running job to stop, to answer with the outcome

# The bounds `POST /v1/fine_tuning/jobs` enforces (train/config.py's BOUNDS; a test keeps the two in step).
BOUNDS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (0, 10)}
RULES = {
    "n_epochs": "3; more for small sets (min(25, ceil(100/n)) when 3n < 100), fewer for huge ones "
                "(max(1, 25000 // n) when 3n > 25000)",
    "batch_size": "the largest power of two not above n/32, between 1 and 8",
    "learning_rate_multiplier": f"1.0, scaling the base learning rate (LoRA {BASE_LEARNING_RATE['lora']:g}, "
                                f"full {BASE_LEARNING_RATE['full']:g})",
}


@dataclass
class JobsService:
    db: Database
    queue: Queue
    files: Files
    registry: Registry
    deployments: Deployments
    settings: Settings

    @property
    def runs_root(self) -> Path:
        return self.settings.state_dir / "jobs"

    @property
    def owner(self) -> str:
        return self.settings.owner

    def create(self, body: JobCreate, idempotency_key: str | None = None) -> FineTuningJob:
        """Check the request (model, files, method) and record the job in `validating_files`."""
        start = self.registry.training_start(body.model)
        kind = body.method.type if body.method else "supervised"
        if kind not in ("supervised", "dpo"):
            raise InvalidRequest(f"the {kind!r} method is not available: tunelab trains supervised and dpo "
                                 "fine-tunes", param="method.type")
        if body.early_stopping and not body.validation_file:
            raise InvalidRequest("early stopping watches the validation loss: give a validation_file, or leave "
                                 "early_stopping out", param="early_stopping")
        if body.integrations:
            raise InvalidRequest("integrations (such as Weights & Biases) are not available in tunelab; the "
                                 "job's events and results.csv carry its metrics", param="integrations")
        chosen = getattr(body.method, kind, None) if body.method else None
        hyper = chosen.hyperparameters if chosen and chosen.hyperparameters else body.hyperparameters
        shown = hyper.model_dump() if hyper else {k: "auto" for k in SHOWN}
        if kind == "dpo":
            shown = {"beta": "auto", **shown}
        request = {
            "model": body.model, "base": start.base, "training_file": body.training_file,
            "validation_file": body.validation_file, "suffix": body.suffix,
            "seed": body.seed if body.seed is not None else random.SystemRandom().randrange(2**31),
            "hyperparameters": shown, "metadata": body.metadata, "nproc": body.nproc,
            **({"method": "dpo"} if kind == "dpo" else {}),  # absent for supervised: older requests match
        }
        if body.early_stopping:
            request["early_stopping"] = body.early_stopping.model_dump()
        # `nproc` left out at its default, so a retried request made before it existed still matches
        left_out = {k for k, unset in (("nproc", body.nproc == 1), ("early_stopping", body.early_stopping is None))
                    if unset}
        fingerprint = hashlib.sha256(body.model_dump_json(exclude=left_out or None).encode()).hexdigest()
        with self.db.write() as conn:
            self._check_files(body, conn, "preference" if kind == "dpo" else "chat")
            while True:  # the model id carries 8 hex digits of the job id: keep them unique
                job_id = new_id("ftjob")
                output = f"ft:{start.base}:{self.owner}:{body.suffix or ''}:{job_id[-8:]}"
                if not self.queue.output_taken(conn, output):
                    break
            if idempotency_key:
                first = remember(conn, "fine_tuning.jobs", idempotency_key, fingerprint, job_id)
                if first != job_id:
                    return self.get(first, conn)
            self.queue.add(job_id, request, conn=conn, run_dir=str(self.runs_root / job_id), output_model=output)
            events.add_event(conn, job_id, f"Created fine-tuning job: {job_id}")
            files = f"training file: {body.training_file}" + (
                f" and validation file: {body.validation_file}" if body.validation_file else "")
            events.add_event(conn, job_id, f"Validating {files}")
            return self.get(job_id, conn)

    def _check_files(self, body: JobCreate, conn, expect: str) -> None:
        """The job's files exist, are for fine-tuning and in the format the method trains on (`expect`: chat or
        preference, told from the first example); inside the job's write transaction, so a concurrent delete
        cannot slip between this check and the job that reads them. The worker checks every line afterwards."""
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is None:
                continue
            try:
                found = self.files.get(file_id, conn)
            except NotFound:
                raise InvalidRequest(f"the {param.replace('_', ' ')} {file_id!r} does not exist", param=param) from None
            if found["purpose"] != "fine-tune":
                raise InvalidRequest(f"the file {file_id} has purpose {found['purpose']!r}; fine-tuning needs a "
                                     "file uploaded with purpose 'fine-tune'", param=param)
            try:
                kind, line = detect_format(self.files.path(file_id))
            except OSError:  # its bytes are gone: the worker's check fails the job, naming the file
                kind, line = None, 0
            if kind and kind != expect:
                method = "dpo" if expect == "preference" else "supervised"
                raise InvalidRequest(f"the {param.replace('_', ' ')} {file_id} is in the {FORMATS[kind]} (line "
                                     f"{line}), but the {method} method trains on the {FORMATS[expect]}",
                                     param=param)
        if body.validation_file and body.validation_file == body.training_file:
            raise InvalidRequest("the validation file must be different from the training file",
                                 param="validation_file")

    def get(self, job_id: str, conn=None) -> FineTuningJob:
        row = self.queue.get(job_id, conn)
        if row is None:
            raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
        return self._shown(row)

    def list(self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None) -> JobList:
        rows, more = self.queue.page(after=after, limit=limit, metadata=metadata or {})
        return JobList(data=[self._shown(r) for r in rows], has_more=more)

    def _shown(self, row) -> FineTuningJob:
        job = FineTuningJob.of(row, self.owner)
        job.early_stopping = json.loads(row["request"]).get("early_stopping")
        job.recommended_checkpoint = recommended_checkpoint(self.registry, row)
        return job

    def events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> EventList:
        self.get(job_id)
        found, more = events.page(self.db, job_id, after=after, limit=limit)
        return EventList(data=[JobEvent.of(e) for e in found], has_more=more)

    def checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> CheckpointList:
        self.get(job_id)
        found, more = self.registry.checkpoints(job_id, after=after, limit=limit)
        data = [Checkpoint.of(c) for c in found]
        return CheckpointList(data=data, first_id=data[0].id if data else None,
                              last_id=data[-1].id if data else None, has_more=more)

    async def act(self, job_id: str, action: str) -> FineTuningJob:
        """cancel, pause or resume. For a running job, wait (without holding a thread) up to SETTLE_SECONDS for
        the worker to stop it, so the answer shows the outcome — `cancelled` or `paused` — as the cloud's does."""
        job = await run_in_threadpool(self._request, job_id, action)
        deadline = time.monotonic() + SETTLE_SECONDS
        while job.status == "running" and time.monotonic() < deadline:
            await anyio.sleep(0.1)
            job = await run_in_threadpool(self.get, job_id)
        return job

    def _request(self, job_id: str, action: str) -> FineTuningJob:
        status = self.queue.request(job_id, action)
        with self.db.write() as conn:
            if status == "running":  # the worker stops the training and records the outcome
                events.add_event(conn, job_id, {"cancel": "Cancelling the job", "pause": "Pausing the job: a "
                                                "checkpoint is being written"}[action])
            else:
                events.add_event(conn, job_id, {"cancelled": "The job was cancelled",
                                                "queued": "The job was resumed and is queued"}[status])
        return self.get(job_id)

    def delete(self, job_id: str) -> dict:
        """Remove a finished job: its record, events, checkpoints and run directory (tunelab's own route; the
        cloud keeps jobs forever). Its fine-tuned model goes first (DELETE /v1/models/…), and no checkpoint of it
        may be deployed; its result file stays a file."""
        with self.db.write() as conn:
            job = self.get(job_id, conn)
            if job.status not in FINAL:
                raise InvalidRequest(f"fine-tuning job {job_id} is {job.status}; cancel it or wait for it to "
                                     "finish first", param="fine_tuning_job_id")
            model = self.registry.model_of_job(conn, job_id)
            if model:
                raise InvalidRequest(f"the job's fine-tuned model {model['id']} still exists; delete it first",
                                     param="fine_tuning_job_id")
            for checkpoint in self.registry.checkpoint_models(conn, job_id):
                names = self.deployments.names_serving(conn, checkpoint)
                if names:
                    raise InvalidRequest(f"checkpoint {checkpoint} is deployed as {names[0]!r}; delete the "
                                         "deployment first", param="fine_tuning_job_id")
            run_dir = self.queue.get(job_id, conn)["run_dir"]
            self.registry.forget_checkpoints(conn, job_id)
            events.delete_events(conn, job_id)
            self.queue.delete(conn, job_id)
            forget(conn, job_id)
        if run_dir:  # after the commit: the write lock is not held while files go
            shutil.rmtree(run_dir, ignore_errors=True)
            (Path(run_dir).parent / f"{job_id}.log").unlink(missing_ok=True)
        return {"id": job_id, "object": "fine_tuning.job", "deleted": True}

    def defaults(self, training_file: str | None) -> FineTuningDefaults:
        """The default base model and each hyperparameter's default, bounds and `auto` rule; with
        `training_file`, the values `auto` resolves to for its valid examples."""
        size, auto = None, {"learning_rate_multiplier": 1.0}
        if training_file:
            self.files.training_data(training_file, "training_file")
            examples = len(validate_file(self.files.path(training_file), name=training_file).examples)
            size = {"id": training_file, "examples": examples}
            auto = auto_hyperparameters(examples) if examples else auto
        return FineTuningDefaults(
            model=self.settings.default_model, training_file=size,
            hyperparameters={name: {"minimum": low, "maximum": high, "rule": RULES[name], "auto": auto.get(name)}
                             for name, (low, high) in BOUNDS.items()})
