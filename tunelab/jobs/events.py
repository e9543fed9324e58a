"""Job events, the way the cloud reports them: lifecycle messages and one metrics event per training step.

`JobReporter` is the recipe's `Reporter` inside a job's training process: every write it makes names the job's
lease token, so a process that lost its lease (the job was reaped and taken over) cannot write any more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..store.blobs import new_id
from ..store.db import Database
from ..train.metrics import StepMetrics
from .queue import Lease, LeaseLost


def add_event(conn, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    """Append an event inside the caller's write transaction."""
    conn.execute("INSERT INTO job_events (id, job_id, created_at, level, type, message, data) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (new_id("ftevent"), job_id, int(time.time()), level, type, message,
                  json.dumps(data) if data is not None else None))


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
    if "valid_loss" in metrics:
        text += f", validation loss={metrics['valid_loss']:.2f}"
    if "full_valid_loss" in metrics:
        text += f", full validation loss={metrics['full_valid_loss']:.2f}"
    return text


def assert_lease(conn, lease: Lease) -> None:
    """Inside a write transaction: stop here unless this process still owns the job."""
    row = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_token = ?", (lease.job_id, lease.token)).fetchone()
    if row is None:
        raise LeaseLost(lease.job_id)


class JobReporter:
    """Writes the recipe's progress into the job: hyperparameters, metrics events, checkpoints, ETA."""

    def __init__(self, db: Database, lease: Lease, output_model: str):
        self.db = db
        self.lease = lease
        self.output_model = output_model

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None:
        shown = {k: hyperparameters[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        with self.db.write() as conn:
            assert_lease(conn, self.lease)
            conn.execute("UPDATE jobs SET hyperparameters = ? WHERE id = ?",
                         (json.dumps({**shown, "resolved": hyperparameters}), self.lease.job_id))
            if first_step:
                add_event(conn, self.lease.job_id, f"Fine-tuning job resumed at step {first_step}/{total_steps}")
            else:
                add_event(conn, self.lease.job_id,
                          f"Fine-tuning job started: {total_steps} steps ({shown['n_epochs']} epochs, batch size "
                          f"{shown['batch_size']}, learning rate {hyperparameters['learning_rate']:.2g})")

    def step(self, metrics: StepMetrics) -> None:
        data = metrics.openai()
        with self.db.write() as conn:
            assert_lease(conn, self.lease)
            conn.execute("UPDATE jobs SET estimated_finish = ? WHERE id = ?",
                         (int(time.time() + metrics.eta_seconds), self.lease.job_id))
            add_event(conn, self.lease.job_id, metrics_message(data), type="metrics", data=data)

    def message(self, text: str) -> None:
        with self.db.write() as conn:
            assert_lease(conn, self.lease)
            add_event(conn, self.lease.job_id, text, level="warn" if "truncated" in text else "info")

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        model = f"{self.output_model}:ckpt-step-{step}"
        with self.db.write() as conn:
            assert_lease(conn, self.lease)
            conn.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (self.lease.job_id, step))
            conn.execute("INSERT INTO checkpoints (id, job_id, step, model, path, metrics, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (new_id("ftckpt").replace("-", "_"), self.lease.job_id, step, model, str(path),
                          json.dumps(metrics), int(time.time())))
            # The recipe keeps the newest few checkpoint directories; forget the ones it removed.
            for row in conn.execute("SELECT id, path FROM checkpoints WHERE job_id = ?", (self.lease.job_id,)):
                if not Path(row["path"]).is_dir():
                    conn.execute("DELETE FROM checkpoints WHERE id = ?", (row["id"],))
            add_event(conn, self.lease.job_id, f"Checkpoint created at step {step} with Snapshot ID: {model}")

    def finish(self) -> None:
        pass
