"""One fine-tuning job's training process: `python -m tunelab.jobs.runner JOB_ID`, started by the worker, which
writes the job's lease token to its standard input (never on the command line, where any user could read it).

It builds the job's training config, runs the recipe with a `JobReporter`, and records the outcome under its
lease: succeeded (a fine-tuned model and results.csv), failed (the error, naming the file and line), paused
(SIGTERM after a pause request: checkpoint, then stop) or back in the queue (SIGTERM when the server stops).
A job that already has a complete checkpoint resumes from it. If the server dies, this process exits too.
Running out of memory or disk fails the job at once with `out_of_memory` or `disk_full` and what to do about it:
another attempt would only fail the same way.

A job with `nproc` N > 1 runs this module on N processes under torchrun (the worker starts it through
train/launch.py); the token goes to every rank's standard input, and rank 0 alone reads it, holds the lease,
watches for a pause and records the outcome. The other ranks only compute. When a rank dies, the others leave
without an outcome (GroupLost) and the worker requeues the job like any trainer that died.
"""

from __future__ import annotations

import signal
import threading

# Before anything slow is imported: a SIGTERM from the server (it is shutting down) must never find the
# default handler, which would end the process without a checkpoint. The recipe takes over while it trains.
STOP = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: STOP.set())

from ..train.launch import GroupLost, die_with_parent, exit_with_parent, rank, world_size  # noqa: E402

if world_size() > 1:  # a rank under torchrun dies with it, even while the imports below still load torch
    die_with_parent()

import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from .. import crashpoints  # noqa: E402
from ..config import get_settings  # noqa: E402
from ..crashpoints import crash_point  # noqa: E402
from ..errors import TunelabError  # noqa: E402
from ..models.registry import Registry  # noqa: E402
from ..store.db import Database  # noqa: E402
from ..store.files import Files  # noqa: E402
from ..train.config import TrainConfig  # noqa: E402
from ..train.faults import disk_full, out_of_memory  # noqa: E402
from .best_checkpoint import recommended_checkpoint  # noqa: E402
from .events import JobReporter, add_event, note_outcome  # noqa: E402
from .queue import Lease, LeaseLost, Queue  # noqa: E402

PAUSE_POLL_SECONDS = 0.5


def main(job_id: str, token: str) -> int:
    if rank() != 0:
        return _follow(job_id)
    exit_with_parent()  # the job is reclaimed on the server's next start
    crashpoints.role = "trainer"
    settings = get_settings()
    if settings.trainer_memory_limit_mb:  # before torch loads, so every allocation counts against it
        limit = settings.trainer_memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    db = Database(settings.state_dir / "tunelab.db")
    queue = Queue(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    files = Files(db, settings.state_dir / "files", settings.max_file_bytes)
    job = queue.get(job_id)
    if job is None or job["lease_token"] != token:
        return 0  # the lease moved on before we started
    lease = Lease(job_id, token, job["attempt"])
    registry = Registry(db, settings.owner)
    _stop_when_paused(queue, job_id)
    request = json.loads(job["request"])
    blob_names = {}
    group = None
    try:
        from ..train import checkpoints
        from ..train.distributed import join
        from ..train.recipe import run  # torch loads here, after the cheap checks

        group = join()  # None for a 1-process job
        config, blob_names = _config(request, Path(job["run_dir"]), files, registry)
        resume = checkpoints.latest_checkpoint(config.out / "checkpoints") is not None
        if not resume and config.out.exists():  # an attempt that died before its first checkpoint
            shutil.rmtree(config.out)
        result = run(config, JobReporter(db, queue, registry, lease, job["output_model"]), resume=resume, stop=STOP,
                     group=group)
        if result.stopped_early:
            _stopped(db, queue, registry, lease, result.steps)
        else:
            _succeeded(db, queue, files, registry, lease, result, request, job["output_model"], settings.owner)
    except LeaseLost:
        return 0
    except GroupLost:  # another rank died: no outcome; the worker sees the group end and requeues the job
        traceback.print_exc()
        return 1
    except KeyboardInterrupt:  # a second SIGTERM: leave without an outcome; the server gives the job back
        return 1
    except TunelabError as exc:
        _fail(db, queue, lease, exc.code, _named(exc.message, blob_names), exc.param)
    except Exception as exc:  # a bug or resource failure: the job fails with the cause; the traceback goes to the log
        traceback.print_exc()
        code, message = _failure(exc)
        _fail(db, queue, lease, code, _named(message, blob_names), None)
    finally:
        if group:
            group.leave()
    return 0


def _follow(job_id: str) -> int:
    """A rank other than 0 of an N-process job: train its share, write nothing, record nothing. An error every
    rank meets (bad data) is rank 0's to report; any other ends this rank, and torchrun ends the group."""
    exit_with_parent()  # the job is reclaimed on the server's next start
    crashpoints.role = "trainer"
    settings = get_settings()
    if settings.trainer_memory_limit_mb:
        limit = settings.trainer_memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    db = Database(settings.state_dir / "tunelab.db")
    queue = Queue(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    job = queue.get(job_id)
    if job is None:
        return 0
    from ..train import checkpoints
    from ..train.distributed import Quiet, join
    from ..train.recipe import run

    group = join()
    try:
        files = Files(db, settings.state_dir / "files", settings.max_file_bytes)
        config, _ = _config(json.loads(job["request"]), Path(job["run_dir"]), files, Registry(db, settings.owner))
        resume = checkpoints.latest_checkpoint(config.out / "checkpoints") is not None
        run(config, Quiet(), resume=resume, stop=STOP, group=group)
    except TunelabError:
        return 0
    except (GroupLost, KeyboardInterrupt):
        return 1
    finally:
        group.leave()
    return 0


def _failure(exc: Exception) -> tuple[str, str]:
    """The error code and message for what stopped training: memory, disk space, or anything else."""
    if out_of_memory(exc):
        return "out_of_memory", ("the training ran out of memory: try a smaller batch_size, or shorter examples "
                                 "(split long conversations), then create the job again")
    if disk_full(exc):
        return "disk_full", "the disk is full: free some space, then create the job again"
    return "training_failed", f"{type(exc).__name__}: {exc}"


def _stop_when_paused(queue: Queue, job_id: str) -> None:
    """A pause asked for by a client stops training at the next step boundary, with a checkpoint."""
    def watch():
        while not STOP.is_set():
            if queue.requested(job_id) == "pause":
                STOP.set()
            time.sleep(PAUSE_POLL_SECONDS)

    threading.Thread(target=watch, daemon=True).start()


def _config(request: dict, run_dir: Path, files: Files, registry: Registry) -> tuple[TrainConfig, dict]:
    start = registry.training_start(request["model"])
    train = files.path(request["training_file"])
    valid = files.path(request["validation_file"]) if request["validation_file"] else None
    names = {str(train): request["training_file"], **({str(valid): request["validation_file"]} if valid else {})}
    hp = request["hyperparameters"]
    extra = {}
    if start.weights is not None and start.method == "lora":
        rank = json.loads((start.weights / "adapter_config.json").read_text())["r"]
        extra = {"init_adapter": start.weights, "lora_rank": rank}
    extra["early_stopping_patience"] = (request.get("early_stopping") or {}).get("patience")
    model = str(start.weights) if start.method == "full" else start.base
    config = TrainConfig(model=model, train_file=train, validation_file=valid, suffix=request["suffix"],
                         n_epochs=hp["n_epochs"], batch_size=hp["batch_size"],
                         learning_rate_multiplier=hp["learning_rate_multiplier"], seed=request["seed"],
                         method=start.method or "lora", out=run_dir,
                         precision=get_settings().train_precision, objective=request.get("method", "supervised"),
                         beta=hp.get("beta", "auto"), **extra)
    return config, names


def _succeeded(db, queue: Queue, files: Files, registry: Registry, lease: Lease, result, request: dict,
               model_id: str, owner: str) -> None:
    crash_point("final.before_record")
    with db.write() as conn:
        queue.assert_lease(conn, lease)
        results = files.add_path(result.out / "results.csv", "results.csv", "fine-tune-results", conn=conn)
        method = json.loads((result.out / "config.json").read_text())["hyperparameters"]["method"]
        registry.add_fine_tuned(conn, model_id, job_id=lease.job_id, base=request["base"], parent=request["model"],
                                method=method, path=result.weights, owned_by=owner)
        queue.finish(lease, "succeeded", conn=conn, trained_tokens=result.trained_tokens, result_file=results)
        add_event(conn, lease.job_id, f"New fine-tuned model created: {model_id}")
        found = recommended_checkpoint(registry, queue.get(lease.job_id, conn))
        if found:
            add_event(conn, lease.job_id, f"Recommended checkpoint: {found['id']}: {found['reason']}",
                      data={"recommended_checkpoint": found})
        add_event(conn, lease.job_id, "The job has successfully completed")
    crash_point("final.after_record")


def _stopped(db, queue: Queue, registry: Registry, lease: Lease, step: int) -> None:
    if queue.requested(lease.job_id) == "pause":
        latest = registry.latest_checkpoint(lease.job_id)
        with db.write() as conn:
            queue.finish(lease, "paused", conn=conn)
            snapshot = f"; checkpoint {latest} can be deployed" if latest else ""
            add_event(conn, lease.job_id, f"The job was paused at step {step}{snapshot}")
        return
    status = queue.release(lease, count_attempt=False)
    if status != "queued":  # a cancel arrived meanwhile
        return note_outcome(db, lease.job_id, status, "the server is shutting down")
    with db.write() as conn:
        add_event(conn, lease.job_id, f"Training stopped at step {step} because the server is shutting down; the "
                  "job is queued and resumes from its checkpoint", level="warn")


def _fail(db, queue: Queue, lease: Lease, code: str, message: str, param: str | None) -> None:
    try:
        with db.write() as conn:
            queue.finish(lease, "failed", conn=conn, error={"code": code, "message": message, "param": param})
            add_event(conn, lease.job_id, f"Fine-tuning failed: {message}", level="error")
    except LeaseLost:
        pass


def _named(message: str, blob_names: dict) -> str:
    """Name uploaded files by their id, not by where their bytes lie on disk."""
    for path, file_id in blob_names.items():
        message = message.replace(path, file_id)
    return message


if __name__ == "__main__":
    from ..store.home import private_files

    private_files()  # checkpoints, adapters, results.csv and the log: readable by their owner only
    # On N processes every rank inherits the pipe; rank 0 alone reads the token from it.
    sys.exit(main(sys.argv[1], sys.stdin.readline().strip() if rank() == 0 else ""))
