"""Job events, the way the cloud reports them: lifecycle messages and one metrics event per training step.

`JobReporter` is the recipe's `Reporter` inside a job's training process: every write it makes names the job's
lease token, so a process that lost its lease (the job was reaped and taken over) cannot write any more. A resumed
run repeats the steps after its checkpoint: their metrics events from the interrupted attempt are dropped as it
resumes, so each step has exactly one, matching results.csv.
This module owns the `job_events` table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..crashpoints import crash_point
from ..errors import InvalidRequest
from ..models.registry import Registry
from ..store.blobs import new_id
from ..store.db import Database
from ..train.metrics import StepMetrics
from .queue import Lease, Queue


def add_event(conn, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    """Append an event inside the caller's write transaction."""
    conn.execute("INSERT INTO job_events (id, job_id, created_at, level, type, message, data) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (new_id("ftevent"), job_id, int(time.time()), level, type, message,
                  json.dumps(data) if data is not None else None))


def page(db: Database, job_id: str, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """The job's events newest first, after the event `after`, and whether more follow."""
    where, params = "job_id = ?", [job_id]
    if after:
        rows = db.query("SELECT seq FROM job_events WHERE id = ? AND job_id = ?", (after, job_id))
        if not rows:
            raise InvalidRequest(f"no event {after!r} in job {job_id} to page after", param="after")
        where += " AND seq < ?"
        params.append(rows[0]["seq"])
    rows = db.query(f"SELECT * FROM job_events WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1))
    events = [{**dict(r), "data": json.loads(r["data"]) if r["data"] else {}} for r in rows[:limit]]
    return events, len(rows) > limit


def delete_events(conn, job_id: str) -> None:
    conn.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))


def note_outcome(db: Database, job_id: str, status: str, cause: str) -> None:
    """The event for a job given back without an outcome from its trainer (see `Queue.release`)."""
    text, level = {
        "queued": (f"Training was interrupted ({cause}); the job is queued again and resumes from its last "
                   "checkpoint", "warn"),
        "failed": (f"Training was interrupted ({cause}) too many times; the job failed", "error"),
        "cancelled": ("The job was cancelled", "info"),
        "paused": ("The job was paused; resume continues from its last checkpoint", "info"),
    }[status]
    with db.write() as conn:
        add_event(conn, job_id, text, level=level)


def metrics_message(metrics: dict) -> str:
    """`Step 12/120: training loss=1.23, validation loss=1.30, full validation loss=1.28`."""
    text = f"Step {metrics['step']}/{metrics['total_steps']}: training loss={metrics['train_loss']:.2f}"
    if "train_reward_margin" in metrics:  # a DPO step
        text += (f", reward margin={metrics['train_reward_margin']:.2f}, reward accuracy="
                 f"{metrics['train_reward_accuracy']:.2f}")
    if "valid_loss" in metrics:
        text += f", validation loss={metrics['valid_loss']:.2f}"
    if "full_valid_loss" in metrics:
        text += f", full validation loss={metrics['full_valid_loss']:.2f}"
    return text


class JobReporter:
    """Writes the recipe's progress into the job: hyperparameters, metrics events, checkpoints, ETA."""

    def __init__(self, db: Database, queue: Queue, registry: Registry, lease: Lease, output_model: str):
        self.db = db
        self.queue = queue
        self.registry = registry
        self.lease = lease
        self.output_model = output_model

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None:
        shown = {k: hyperparameters[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        with self.db.write() as conn:
            self.queue.record(conn, self.lease, hyperparameters={**shown, "resolved": hyperparameters})
            # Steps an interrupted attempt ran past its last checkpoint (or before its first) run again.
            conn.execute("DELETE FROM job_events WHERE job_id = ? AND type = 'metrics' AND "
                         "json_extract(data, '$.step') > ?", (self.lease.job_id, first_step))
            if first_step:
                add_event(conn, self.lease.job_id, f"Fine-tuning job resumed at step {first_step}/{total_steps}")
            else:
                add_event(conn, self.lease.job_id,
                          f"Fine-tuning job started: {total_steps} steps ({shown['n_epochs']} epochs, batch size "
                          f"{shown['batch_size']}, learning rate {hyperparameters['learning_rate']:.2g}"
                          + (f", DPO with beta {hyperparameters['beta']:g}" if hyperparameters.get("beta") else "")
                          + ")")

    def step(self, metrics: StepMetrics) -> None:
        data = metrics.openai()
        with self.db.write() as conn:
            self.queue.record(conn, self.lease, estimated_finish=int(time.time() + metrics.eta_seconds))
            add_event(conn, self.lease.job_id, metrics_message(data), type="metrics", data=data)
        crash_point("metrics.after_event")

    def message(self, text: str) -> None:
        with self.db.write() as conn:
            self.queue.assert_lease(conn, self.lease)
            add_event(conn, self.lease.job_id, text, level="warn" if "truncated" in text else "info")

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        model = f"{self.output_model}:ckpt-step-{step}"
        crash_point("checkpoint.before_record")
        with self.db.write() as conn:
            self.queue.assert_lease(conn, self.lease)
            if model in self.registry.checkpoint_models(conn, self.lease.job_id):
                return  # recorded before the run was interrupted (a resumed run reports it again)
            self.registry.add_checkpoint(conn, self.lease.job_id, step, model, path, metrics)
            add_event(conn, self.lease.job_id, f"Checkpoint created at step {step} with Snapshot ID: {model}")
        crash_point("checkpoint.after_record")

    def finish(self) -> None:
        pass
