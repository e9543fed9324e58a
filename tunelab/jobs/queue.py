"""The durable job queue in SQLite: statuses, the transitions between them, and leases with fencing.

A worker claims the oldest queued job by a conditional UPDATE inside `BEGIN IMMEDIATE`, so two workers can never
own the same job. The claim hands out a lease token; heartbeats extend the lease and every worker write names the
token, so a worker that stalled past its lease (and was reaped) cannot overwrite the new owner's state. The reaper
puts jobs whose lease expired back in the queue (resumed later from their last checkpoint) until `max_attempts`,
then fails them with the last cause.

This module owns the `jobs` table: every statement that writes it is here, and a status changes only through the
transitions below. Other modules call these methods (with their open transaction as `conn` where the change must
commit with theirs).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from ..errors import InvalidRequest, NotFound
from ..store.db import Database

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")  # jobs that will still read their files and model

# What a client may ask for, from which statuses; anything else is a 400 and changes nothing.
CLIENT_TRANSITIONS = {
    "cancel": {"validating_files", "queued", "running", "paused"},
    "pause": {"running"},
    "resume": {"paused"},
}


@dataclass
class Lease:
    job_id: str
    token: str
    attempt: int


class LeaseLost(Exception):
    """The worker's lease expired and the job moved on; the worker must stop writing and let go."""


class Queue:
    def __init__(self, db: Database, *, lease_seconds: float = 30.0, max_attempts: int = 3, clock=time.time):
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock

    def add(self, job_id: str, request: dict, status: str = "validating_files", conn=None, **columns) -> None:
        """Enqueue a job (with `conn`, inside the caller's write transaction); `columns` fill other job fields."""
        values = {"id": job_id, "status": status, "request": json.dumps(request), "created_at": int(self.clock()),
                  **columns}
        sql = (f"INSERT INTO jobs ({', '.join(values)}) VALUES ({_marks(tuple(values))})", tuple(values.values()))
        if conn is not None:
            conn.execute(*sql)
        else:
            with self.db.write() as own:
                own.execute(*sql)

    def get(self, job_id: str, conn=None):
        """The job's row, or None."""
        conn = conn or self.db.connection()
        return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def page(self, *, after: str | None, limit: int, metadata: dict[str, str]) -> tuple[list, bool]:
        """Rows newest first after the job `after`, filtered by metadata, and whether more follow."""
        where, params = [], []
        if after:
            cursor = self.db.query("SELECT rowid FROM jobs WHERE id = ?", (after,))
            if not cursor:
                raise InvalidRequest(f"no object {after!r} to page after", param="after")
            where.append("rowid < ?")
            params.append(cursor[0]["rowid"])
        for key, value in metadata.items():
            where.append("EXISTS (SELECT 1 FROM json_each(request, '$.metadata') WHERE key = ? AND value = ?)")
            params += [key, value]
        rows = self.db.query(f"SELECT * FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "
                             "ORDER BY rowid DESC LIMIT ?", (*params, limit + 1))
        return rows[:limit], len(rows) > limit

    def running(self) -> list:
        return self.db.query("SELECT id, lease_owner, lease_token, attempt FROM jobs WHERE status = 'running'")

    def holds(self, lease: Lease) -> bool:
        """Whether `lease` still owns its job."""
        return bool(self.db.query("SELECT 1 FROM jobs WHERE id = ? AND lease_token = ?", (lease.job_id, lease.token)))

    def validating(self) -> list[str]:
        """Jobs whose files are still to be checked, oldest first."""
        return [r["id"] for r in self.db.query("SELECT id FROM jobs WHERE status = 'validating_files' ORDER BY rowid")]

    def output_taken(self, conn, model_id: str) -> bool:
        return conn.execute("SELECT 1 FROM jobs WHERE output_model = ?", (model_id,)).fetchone() is not None

    def active_job_using_file(self, conn, file_id: str):
        """The oldest unfinished job that reads `file_id` (training or validation), or None."""
        return conn.execute(
            f"SELECT id, status FROM jobs WHERE status IN ({_marks(ACTIVE)}) AND (json_extract(request, "
            "'$.training_file') = ? OR json_extract(request, '$.validation_file') = ?) ORDER BY rowid",
            (*ACTIVE, file_id, file_id)).fetchone()

    def active_job_continuing(self, conn, model_id: str):
        """The oldest unfinished job that continues training `model_id`, or None."""
        return conn.execute(f"SELECT id, status FROM jobs WHERE json_extract(request, '$.model') = ? AND status IN "
                            f"({_marks(ACTIVE)}) ORDER BY rowid", (model_id, *ACTIVE)).fetchone()

    def delete(self, conn, job_id: str) -> None:
        conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def files_checked(self, job_id: str, conn, error: dict | None = None) -> bool:
        """`validating_files` → `queued`, or → `failed` with `error`; False if the job left that status meanwhile
        (a cancel)."""
        if error is None:
            sql = "UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'validating_files'", (job_id,)
        else:
            sql = ("UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE id = ? AND status = "
                   "'validating_files'", (json.dumps(error), int(self.clock()), job_id))
        return bool(conn.execute(*sql).rowcount)

    def assert_lease(self, conn, lease: Lease) -> None:
        """Inside a write transaction: stop here unless this process still owns the job."""
        row = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_token = ?",
                           (lease.job_id, lease.token)).fetchone()
        if row is None:
            raise LeaseLost(lease.job_id)

    def record(self, conn, lease: Lease, **fields) -> None:
        """What a running job's trainer reports: `hyperparameters` (resolved), `estimated_finish`."""
        self.assert_lease(conn, lease)
        assert set(fields) <= {"hyperparameters", "estimated_finish"}, fields
        encoded = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in fields.items()}
        conn.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in encoded)} WHERE id = ?",
                     (*encoded.values(), lease.job_id))

    def requested(self, job_id: str) -> str | None:
        """The client's pending request for a running job ('cancel' or 'pause'), if any."""
        rows = self.db.query("SELECT requested FROM jobs WHERE id = ?", (job_id,))
        return rows[0]["requested"] if rows else None

    def status(self, job_id: str) -> str:
        rows = self.db.query("SELECT status FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"fine-tuning job {job_id!r} does not exist", param="fine_tuning_job_id")
        return rows[0]["status"]

    def request(self, job_id: str, action: str) -> str:
        """A client's cancel, pause or resume; returns the new status. Invalid transitions change nothing."""
        with self.db.write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"fine-tuning job {job_id!r} does not exist", param="fine_tuning_job_id")
            status = row["status"]
            if status not in CLIENT_TRANSITIONS[action]:
                raise InvalidRequest(f"cannot {action} job {job_id}: it is {status}", param="fine_tuning_job_id")
            if status == "running":  # the worker stops the training and records the outcome
                pending = conn.execute("SELECT requested FROM jobs WHERE id = ?", (job_id,)).fetchone()["requested"]
                if pending == "cancel" and action == "pause":  # never downgrade a cancel
                    raise InvalidRequest(f"cannot pause job {job_id}: it is being cancelled", param="fine_tuning_job_id")
                conn.execute("UPDATE jobs SET requested = ? WHERE id = ?", (action, job_id))
                return status
            new = {"cancel": "cancelled", "resume": "queued"}[action]
            finished = int(self.clock()) if new == "cancelled" else None
            conn.execute("UPDATE jobs SET status = ?, finished_at = ?, requested = NULL WHERE id = ?",
                         (new, finished, job_id))
            return new

    def claim(self, owner: str) -> Lease | None:
        """Take the oldest queued job, or None."""
        token = secrets.token_hex(16)
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET status = 'running', lease_owner = ?, lease_token = ?, lease_expires_at = ?, "
                         "attempt = attempt + 1 WHERE id = ? AND status = 'queued'",
                         (owner, token, now + self.lease_seconds, row["id"]))
            attempt = conn.execute("SELECT attempt FROM jobs WHERE id = ?", (row["id"],)).fetchone()["attempt"]
        return Lease(row["id"], token, attempt)

    def heartbeat(self, lease: Lease) -> str | None:
        """Extend the lease; returns a pending client request ('cancel' or 'pause'), raises LeaseLost if fenced."""
        with self.db.write() as conn:
            done = conn.execute("UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? "
                                "AND status = 'running'",
                                (self.clock() + self.lease_seconds, lease.job_id, lease.token)).rowcount
            if not done:
                raise LeaseLost(lease.job_id)
            return conn.execute("SELECT requested FROM jobs WHERE id = ?", (lease.job_id,)).fetchone()["requested"]

    def finish(self, lease: Lease, status: str, conn=None, **fields) -> None:
        """Record the worker's outcome (succeeded, failed, cancelled, paused) and release the lease.

        With `conn`, inside the caller's write transaction (so the outcome commits with what the job produced).
        """
        assert status in (*FINAL, "paused"), status
        encoded = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        values = {"status": status, "lease_owner": None, "lease_token": None, "lease_expires_at": None,
                  "requested": None, "estimated_finish": None, **encoded}
        if status in FINAL:
            values["finished_at"] = int(self.clock())
        sql = (f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ? AND lease_token = ?",
               (*values.values(), lease.job_id, lease.token))
        if conn is not None:
            done = conn.execute(*sql).rowcount
        else:
            with self.db.write() as own:
                done = own.execute(*sql).rowcount
        if not done:
            raise LeaseLost(lease.job_id)

    def release(self, lease: Lease, *, error: dict | None = None, count_attempt: bool = True) -> str:
        """Give a job back without an outcome from its worker: queued again (to resume from its last checkpoint),
        or failed with `error` once it has been started `max_attempts` times. A graceful stop (`count_attempt=False`,
        the server shutting down) does not use up an attempt. A cancel or pause the client asked for meanwhile
        is carried out instead. Returns the new status."""
        with self.db.write() as conn:
            row = conn.execute("SELECT attempt, requested FROM jobs WHERE id = ? AND lease_token = ?",
                               (lease.job_id, lease.token)).fetchone()
            if row is None:
                raise LeaseLost(lease.job_id)
            return self._give_back(conn, lease.job_id, row["attempt"], row["requested"], error, count_attempt)

    def reap(self) -> list[str]:
        """Give back running jobs whose lease expired (see `release`); returns their ids."""
        now = self.clock()
        with self.db.write() as conn:
            rows = conn.execute("SELECT id, attempt, requested FROM jobs WHERE status = 'running' "
                                "AND lease_expires_at < ?", (now,)).fetchall()
            for row in rows:
                error = {"code": "worker_lost", "param": None,
                         "message": f"the training process stopped {row['attempt']} times without finishing"}
                self._give_back(conn, row["id"], row["attempt"], row["requested"], error, True)
        return [r["id"] for r in rows]

    def _give_back(self, conn, job_id: str, attempt: int, requested: str | None, error: dict | None,
                   count_attempt: bool) -> str:
        if requested == "cancel":
            status, fields = "cancelled", {"finished_at": int(self.clock())}
        elif requested == "pause":
            status, fields = "paused", {}
        elif count_attempt and attempt >= self.max_attempts:
            status, fields = "failed", {"error": json.dumps(error), "finished_at": int(self.clock())}
        else:
            status, fields = "queued", {"attempt": attempt - (0 if count_attempt else 1)}
        values = {"status": status, "lease_owner": None, "lease_token": None, "lease_expires_at": None,
                  "requested": None, "estimated_finish": None, **fields}
        conn.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                     (*values.values(), job_id))
        return status


def _marks(values: tuple) -> str:
    return ", ".join("?" for _ in values)
