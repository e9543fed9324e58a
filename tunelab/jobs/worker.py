"""The job worker inside `tunelab serve`: validates new jobs, trains queued ones in child processes, keeps their
leases alive and carries out cancel and pause.

Each job trains in its own process (`python -m tunelab.jobs.runner`), so a crash, a cancel (SIGKILL) or the
memory a run held never touches the server. A monitor thread per run heartbeats the lease and watches the
child; a child exits on its own if the server dies. A job with `nproc` N > 1 trains on N processes under
PyTorch's launcher (train/launch.py): the child is then torchrun, a dead rank ends it like a crashed trainer, and
a SIGTERM to it reaches every rank. On restart, jobs whose server is gone are queued again at
once and resume from their last complete checkpoint; the lease reaper covers every other way a worker can vanish.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..crashpoints import crash_point
from ..data.validate import MIN_EXAMPLES, validate_file
from ..errors import NotFound
from ..store.db import Database
from ..store.files import Files
from ..threads import child_environment
from ..train.launch import launch_command, launch_environment
from .events import add_event, note_outcome
from .queue import Lease, LeaseLost, Queue

POLL_SECONDS = 0.3


class Worker:
    def __init__(self, settings: Settings, db: Database, queue: Queue, files: Files,
                 on_finished: Callable[[str], None] | None = None):
        self.settings = settings
        self.db = db
        self.queue = queue
        self.files = files
        self.on_finished = on_finished  # called with the job id when a training process has ended
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.runs: dict[str, Run] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.reclaim_orphans()
        self._thread = threading.Thread(target=self._loop, name="tunelab-worker", daemon=True)
        self._thread.start()

    def shutdown(self, grace: float = 60.0) -> None:
        """Stop taking jobs; ask running ones to checkpoint and go back to the queue (they resume next start)."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        for run in self.runs.values():
            run.preempt()
        deadline = time.monotonic() + grace
        for run in self.runs.values():
            run.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.tick()
            except Exception as exc:  # the worker must outlive any one bad job; the cause goes to the log
                print(f"tunelab worker: {type(exc).__name__}: {exc}", file=sys.stderr)

    def tick(self) -> None:
        for job_id in self.queue.reap():
            self._note_lost(job_id)
        for job_id in self.queue.validating():
            try:
                self.validate(job_id)
            except Exception as exc:  # a fault in validating one job must not stall the others
                self._checked(job_id, {"code": "validation_failed", "param": None,
                                                  "message": f"the files could not be checked: {exc}"})
        self.runs = {job_id: run for job_id, run in self.runs.items() if run.alive()}
        while len(self.runs) < self.settings.max_running_jobs and not self._stop.is_set():
            lease = self.queue.claim(self.owner)
            if lease is None:
                break
            crash_point("worker.after_claim")
            self.runs[lease.job_id] = Run(lease, self.queue, self.db, self.settings, self.on_finished).start()

    def validate(self, job_id: str) -> None:
        """Run the data check on the job's files: a bad file fails the job, naming the line; nothing is trained."""
        request = json.loads(self.queue.get(job_id)["request"])
        error = None
        for param in ("training_file", "validation_file"):
            file_id = request[param]
            if file_id is None:
                continue
            try:
                row = self.files.get(file_id)
                result = validate_file(self.files.path(file_id), name=f"{file_id} ({row['filename']})",
                                       min_examples=MIN_EXAMPLES if param == "training_file" else 1,
                                       expect="preference" if request.get("method") == "dpo" else "chat")
            except (NotFound, FileNotFoundError):
                error = {"code": f"invalid_{param}", "param": param,
                         "message": f"the {param.replace('_', ' ')} {file_id} was deleted before the job could use it"}
                break
            if result.errors:
                first = result.errors[0]
                code = "invalid_n_examples" if first.rule == "too_few_examples" else f"invalid_{param}"
                more = f" (and {len(result.errors) - 1} more problems)" if len(result.errors) > 1 else ""
                error = {"code": code, "param": param, "message": f"{first}{more}"}
                break
        crash_point("worker.after_validate")
        self._checked(job_id, error)

    def _checked(self, job_id: str, error: dict | None) -> None:
        with self.db.write() as conn:
            if not self.queue.files_checked(job_id, conn, error):
                return  # cancelled meanwhile
            if error:
                add_event(conn, job_id, f"Files failed validation: {error['message']}", level="error")
            else:
                add_event(conn, job_id, "Files validated, moving job to queued state")

    def reclaim_orphans(self) -> None:
        """Queue again, at once, the jobs an earlier server left running (a crash, kill -9). `tunelab serve` holds
        a lock on its home, so any other owner is gone; its trainers left when it died."""
        for row in self.queue.running():
            if row["lease_owner"] != self.owner:
                lease = Lease(row["id"], row["lease_token"], row["attempt"])
                self._release_lost(lease, "the server stopped while the job was training")

    def _release_lost(self, lease: Lease, cause: str) -> None:
        error = {"code": "worker_lost", "param": None, "message": f"{cause}, {lease.attempt} time(s)"}
        try:
            status = self.queue.release(lease, error=error)
        except LeaseLost:
            return
        self._note_lost(lease.job_id, cause, status)

    def _note_lost(self, job_id: str, cause: str = "the training process stopped responding",
                   status: str | None = None) -> None:
        note_outcome(self.db, job_id, status or self.queue.status(job_id), cause)


class Run:
    """One job's training process and the thread that heartbeats its lease and watches it."""

    def __init__(self, lease: Lease, queue: Queue, db: Database, settings: Settings,
                 on_finished: Callable[[str], None] | None = None):
        self.lease = lease
        self.queue = queue
        self.db = db
        self.settings = settings
        self.on_finished = on_finished
        self.proc: subprocess.Popen | None = None
        self.preempted = False
        self._thread = threading.Thread(target=self._watch, name=f"tunelab-run-{lease.job_id}", daemon=True)

    def start(self) -> "Run":
        job = self.queue.get(self.lease.job_id)
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        # The trainer reads the server's settings, whether they came from the environment or from code.
        env = child_environment({**os.environ, "TUNELAB_HOME": str(self.settings.home),
                                 "TUNELAB_OWNER": self.settings.owner,
                                 "TUNELAB_LEASE_SECONDS": str(self.settings.lease_seconds),
                                 "TUNELAB_MAX_ATTEMPTS": str(self.settings.max_attempts)})
        nproc = json.loads(job["request"]).get("nproc", 1)
        command = [sys.executable, "-m", "tunelab.jobs.runner", self.lease.job_id]
        if nproc > 1:  # torchrun, N ranks; they inherit its standard input, and rank 0 reads the token
            command = launch_command(nproc, "tunelab.jobs.runner", self.lease.job_id)
            env = launch_environment(env, nproc)
        with (run_dir.parent / f"{self.lease.job_id}.log").open("ab") as log:
            # Its output (library warnings, a traceback if it crashes) goes to the job's log, not the console;
            # its own session keeps a Ctrl-C on the server from reaching it except through us.
            # The lease token goes through a pipe: a command line is readable by every user of the machine.
            self.proc = subprocess.Popen(command,
                                         stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        try:
            with self.proc.stdin:
                self.proc.stdin.write(self.lease.token.encode() + b"\n")
        except BrokenPipeError:  # it died at once; watching it records why
            pass
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive() or self.proc.poll() is None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def preempt(self) -> None:
        """Ask the trainer to checkpoint at its next step boundary and stop (the job goes back to the queue)."""
        if not self.preempted and self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.preempted = True

    def _watch(self) -> None:
        try:
            self._supervise()
        except sqlite3.OperationalError as exc:  # a full disk or a locked database: the lease runs out and the
            # reaper gives the job back once the database takes writes again; this thread must not die noisily
            print(f"tunelab worker: {self.lease.job_id}: the outcome could not be recorded ({exc}); the job is "
                  "reclaimed when its lease expires", file=sys.stderr)
            return
        if self.on_finished is not None and not self.preempted:
            try:
                self.on_finished(self.lease.job_id)
            except Exception as exc:  # what follows a job never takes the worker down
                print(f"tunelab worker: after {self.lease.job_id}: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _supervise(self) -> None:
        """Heartbeat the lease and carry out a cancel until the trainer exits. A pause is the trainer's own
        business (it polls for it and checkpoints). Database trouble is retried until the lease would lapse."""
        beat_every = self.settings.lease_seconds / 3
        next_beat, failing_since = 0.0, None
        while self.proc.poll() is None:
            try:
                if time.monotonic() >= next_beat:
                    requested = self.queue.heartbeat(self.lease)
                    crash_point("worker.heartbeat")
                    next_beat = time.monotonic() + beat_every
                else:
                    requested = self.queue.requested(self.lease.job_id)
                failing_since = None
            except LeaseLost:  # the job was reaped and belongs to someone else now
                self._kill()
                return
            except Exception as exc:  # a locked or full database: keep trying while the lease holds
                print(f"tunelab worker: {self.lease.job_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.settings.lease_seconds:
                    self._kill()  # it can no longer be supervised; the reaper gives the job back
                    return
                requested = None
            if requested == "cancel":
                self._cancel()
                return
            time.sleep(POLL_SECONDS)
        crash_point("worker.after_trainer_exit")
        self._after_exit(self.proc.returncode)

    def _kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def _cancel(self) -> None:
        self._kill()
        try:
            with self.db.write() as conn:
                self.queue.finish(self.lease, "cancelled", conn=conn)
                add_event(conn, self.lease.job_id, "The job was cancelled")
        except LeaseLost:  # it finished on its own just before
            pass

    def _after_exit(self, code: int) -> None:
        """The trainer records its own outcome; if it still holds the lease, it exited without one."""
        if not self.queue.holds(self.lease):
            return
        # Stopped by our SIGTERM while still starting up (before it could checkpoint): no attempt is used.
        cause = "the server is shutting down" if self.preempted else f"the training process exited with code {code}"
        error = {"code": "training_process_died", "param": None,
                 "message": f"{cause} on each of {self.lease.attempt} attempts; see {self.lease.job_id}.log"}
        try:
            status = self.queue.release(self.lease, error=error, count_attempt=not self.preempted)
        except LeaseLost:
            return
        note_outcome(self.db, self.lease.job_id, status, cause)
