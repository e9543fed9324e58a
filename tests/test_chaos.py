"""Crash points: `tunelab serve` or a job's training process is killed with SIGKILL at a named point (a seeded
hit of it), and the job still ends `succeeded` with the adapter bytes and results.csv of a run never interrupted,
each step's metrics event recorded once, every checkpoint on disk known to the registry, and nothing half-written
left behind. Also: a job that dies on every attempt fails after the last one with its cause.

    make chaos                                   # every crash point (TUNELAB_CHAOS=all)
    TUNELAB_CHAOS_SEED=7 make chaos              # other hits of each point

`make test` runs three of them: a checkpoint renamed into place but not yet recorded, metrics recorded for steps
the resumed run repeats, and the server dying while it supervises a training process; plus disk full and out of
memory. `make chaos` adds every other point, the job that dies on every attempt, and recovery once space is back.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from conftest import free_port, varied_chats, write_jsonl

TUNELAB = str(Path(sys.executable).with_name("tunelab"))
SEED = int(os.environ.get("TUNELAB_CHAOS_SEED", "15"))

# The job every case runs: 12 examples in batches of 2 for 2 epochs (12 steps), a validation batch every step and
# the whole validation set at each epoch's end, a checkpoint every 4 steps and at each epoch's end (4, 6, 8, 12).
STEPS, CHECKPOINTS, EVALUATIONS = 12, 4, 14
CREATE = dict(model="tiny", seed=11, hyperparameters={"n_epochs": 2, "batch_size": 2})
ENV = {"TUNELAB_API_KEY": "test-key", "TUNELAB_LEASE_SECONDS": "3", "TUNELAB_CHECKPOINT_EVERY_STEPS": "4",
       "TUNELAB_AUTO_COMPARE": "false"}

# (process, point, how many times one uninterrupted job reaches it)
POINTS = [
    ("trainer", "step.before_optimizer", STEPS),
    ("trainer", "step.after_optimizer", STEPS),
    ("trainer", "validation.batch", EVALUATIONS),
    ("trainer", "results.before_rename", 1),
    ("trainer", "results.after_row", STEPS),
    ("trainer", "metrics.after_event", STEPS),
    ("trainer", "checkpoint.after_weights", CHECKPOINTS),
    ("trainer", "checkpoint.after_optimizer", CHECKPOINTS),
    ("trainer", "checkpoint.after_rng", CHECKPOINTS),
    ("trainer", "checkpoint.after_state", CHECKPOINTS),
    ("trainer", "checkpoint.before_rename", CHECKPOINTS),
    ("trainer", "checkpoint.after_rename", CHECKPOINTS),
    ("trainer", "checkpoint.after_prune", CHECKPOINTS),
    ("trainer", "checkpoint.before_record", CHECKPOINTS),
    ("trainer", "checkpoint.after_record", CHECKPOINTS),
    ("trainer", "final.after_weights", 1),
    ("trainer", "final.before_record", 1),
    ("trainer", "final.after_record", 1),
    ("server", "upload.write", 2),
    ("server", "upload.before_row", 2),
    ("server", "worker.after_validate", 1),
    ("server", "worker.after_claim", 1),
    ("server", "worker.heartbeat", 3),
]
DEFAULT = {("trainer", "checkpoint.after_rename"), ("trainer", "metrics.after_event"), ("server", "worker.heartbeat")}
FULL = os.environ.get("TUNELAB_CHAOS") == "all"
CASES = [(role, point, random.Random(f"{SEED}:{point}").randint(1, hits)) for role, point, hits in POINTS
         if FULL or (role, point) in DEFAULT]


class Server:
    """`tunelab serve` in its own process with its own environment, restarted when a crash point killed it."""

    def __init__(self, home: Path, env: dict):
        self.home, self.port = home, free_port()
        self.env = {**os.environ, **ENV, "TUNELAB_HOME": str(home), **env}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Server":
        with (self.home.parent / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen([TUNELAB, "serve", "--port", str(self.port)], stdout=log, stderr=log,
                                         env=self.env)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self  # killed at a crash point while starting (the orphan reclaim): the caller restarts it
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("tunelab serve did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            self.proc.wait(60)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="test-key", max_retries=0)


def call(server: Server, action):
    """Run `action(client)`, restarting the server as often as a crash point kills it."""
    for _ in range(5):
        if not server.alive():
            server.start()
            continue
        try:
            return action(server.client())
        except (openai.APIConnectionError, openai.InternalServerError):
            server.proc.wait(10)  # it was killed mid-request: it is gone or going
    raise AssertionError("the server kept dying")


def upload(server: Server, path: Path) -> str:
    def create():
        with path.open("rb") as f:
            return server.client().files.create(file=f, purpose="fine-tune").id
    try:
        return create()
    except (openai.APIConnectionError, openai.InternalServerError):
        server.proc.wait(10)
    # The upload died with the server: after the restart no row and no bytes of it may remain.
    server.start()
    blobs = server.home / "state" / "files"
    assert not list(blobs.glob(".tmp-*"))
    assert sorted(p.name for p in blobs.glob("file-*")) == sorted(f.id for f in server.client().files.list().data)
    return create()


def finished(server: Server, job_id: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = call(server, lambda c: c.fine_tuning.jobs.retrieve(job_id))
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def run_job(home: Path, data: Path, env: dict, tiny_model: Path) -> tuple[Server, object]:
    from tunelab.models.catalog import import_model

    os.environ["TUNELAB_HOME"] = str(home)  # the test's own home; the fixture restores it
    import_model(tiny_model, "tiny")
    server = Server(home, env).start()
    train, valid = upload(server, data / "train.jsonl"), upload(server, data / "valid.jsonl")
    job = call(server, lambda c: c.fine_tuning.jobs.create(**CREATE, training_file=train, validation_file=valid))
    return server, finished(server, job.id)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    chats = varied_chats(14)
    write_jsonl(folder / "train.jsonl", chats[:12])
    write_jsonl(folder / "valid.jsonl", chats[12:])
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_model) -> dict:
    """The adapter and results.csv of the same job never interrupted."""
    saved = os.environ.get("TUNELAB_HOME")
    home = tmp_path_factory.mktemp("reference") / "home"
    server, job = run_job(home, data, {}, tiny_model)
    try:
        assert job.status == "succeeded", job.error
        checkpoint = home / "state" / "jobs" / job.id / "checkpoints" / "step-000012"
        return {"adapter": adapter_bytes(home, job.id),
                "results": server.client().files.content(job.result_files[0]).text,
                "checkpoint_bytes": sum(p.stat().st_blocks * 512 for p in checkpoint.iterdir())}
    finally:
        server.stop()
        os.environ.pop("TUNELAB_HOME")
        os.environ.update({"TUNELAB_HOME": saved} if saved else {})


def adapter_bytes(home: Path, job_id: str) -> bytes:
    return (home / "state" / "jobs" / job_id / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the trainer watches its parent through the OS")
@pytest.mark.parametrize("role,point,hit", CASES, ids=[f"{r}-{p}-{h}" for r, p, h in CASES])
def test_killed_at_a_crash_point_the_job_still_ends_as_if_never_interrupted(role, point, hit, home, data, reference,
                                                                            tiny_model):
    server, job = run_job(home, data, {"TUNELAB_CRASH_AT": f"{role}:{point}:{hit}"}, tiny_model)
    try:
        deadline = time.monotonic() + 10  # a point after the outcome (the server noting the trainer's exit) may lag
        while not (home / ".crashed").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (home / ".crashed").exists(), f"{role} never reached hit {hit} of {point}"
        job = finished(server, job.id)  # restarted if that killed it: the outcome stands
        assert job.status == "succeeded", job.error
        assert adapter_bytes(home, job.id) == reference["adapter"]
        client = server.client()
        assert client.files.content(job.result_files[0]).text == reference["results"]

        db = sqlite3.connect(f"file:{home / 'state' / 'tunelab.db'}?mode=ro", uri=True)
        steps = [json.loads(d)["step"] for (d,) in db.execute(
            "SELECT data FROM job_events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", (job.id,))]
        assert steps == list(range(1, STEPS + 1))  # each step once, in order
        recorded = {Path(p).name for (p,) in db.execute("SELECT path FROM checkpoints WHERE job_id = ?", (job.id,))}
        on_disk = {p.name for p in (home / "state" / "jobs" / job.id / "checkpoints").iterdir()}
        assert recorded == on_disk  # every kept checkpoint is deployable, none half-written is left
        files = {f.id for f in client.files.list().data}
        assert {job.training_file, job.validation_file, *job.result_files} <= files
        assert not list((home / "state" / "files").glob(".tmp-*"))
    finally:
        server.stop()


@pytest.mark.skipif(not FULL, reason="`make chaos` runs it (TUNELAB_CHAOS=all)")
def test_a_job_killed_on_every_attempt_fails_after_the_last_one_with_its_cause(home, data, tiny_model):
    env = {"TUNELAB_CRASH_AT": "trainer:step.after_optimizer:3", "TUNELAB_CRASH_REPEAT": "1",
           "TUNELAB_MAX_ATTEMPTS": "2"}
    server, job = run_job(home, data, env, tiny_model)
    try:
        assert job.status == "failed"
        assert job.error.code == "training_process_died"
        assert "exited with code -9 on each of 2 attempts" in job.error.message
        events = [e.message for e in server.client().fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert sum("queued again" in m for m in events) == 1 and any("too many times" in m for m in events)
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real filesystem of its own, small enough to fill: a tmpfs (we are root) or none, and the test skips."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file until `leave` bytes stay free on `disk`."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        remaining = stat.f_bavail * stat.f_frsize - leave
        while remaining > 0:
            chunk = min(remaining, 1 << 24)
            f.write(b"\0" * chunk)  # real blocks: tmpfs does not allocate the holes of a sparse file
            remaining -= chunk
    return filler


def test_a_disk_full_while_checkpointing_fails_the_job_keeps_the_previous_checkpoint_and_the_service(
        small_disk, data, reference, tiny_model):
    from tunelab.train.checkpoints import latest_checkpoint

    # The jobs' runs live on the small disk; the database beside them on another, as when a run's checkpoints fill
    # a data volume (a full disk under the database itself is tests/test_db_faults.py's).
    home = small_disk.parent / "home"
    (home / "state").mkdir(parents=True)
    (home / "state" / "jobs").symlink_to(small_disk)
    os.environ["TUNELAB_HOME"] = str(home)
    from tunelab.models.catalog import import_model

    import_model(tiny_model, "tiny")
    server = Server(home, {}).start()
    try:
        train, valid = upload(server, data / "train.jsonl"), upload(server, data / "valid.jsonl")
        # Room for the first checkpoint and what the run writes besides it, not for a second one beside it.
        filler = fill(small_disk, reference["checkpoint_bytes"] * 3 // 2 + (96 << 10))
        client = server.client()
        job = finished(server, client.fine_tuning.jobs.create(**CREATE, training_file=train,
                                                              validation_file=valid).id)
        assert job.status == "failed" and job.error.code == "disk_full", job.error
        assert "free some space" in job.error.message.lower()
        assert client.models.list().data and client.fine_tuning.jobs.retrieve(job.id).status == "failed"
        root = home / "state" / "jobs" / job.id / "checkpoints"
        assert latest_checkpoint(root).name == "step-000004"  # verified against its manifest
        assert [p.name for p in root.iterdir()] == ["step-000004"]  # nothing half-written

        if FULL:  # space is back: the same job created again runs to the end
            filler.unlink()
            again = finished(server, client.fine_tuning.jobs.create(**CREATE, training_file=train,
                                                                    validation_file=valid).id)
            assert again.status == "succeeded", again.error
            assert adapter_bytes(home, again.id) == reference["adapter"]
    finally:
        server.stop()


def test_a_run_out_of_memory_fails_with_a_hint_and_the_next_job_runs(home, tmp_path, data):
    from conftest import build_tiny_model, chat
    from tunelab.models.catalog import import_model

    import_model(build_tiny_model(tmp_path / "long", context=8192), "tiny")
    text = " ".join(f"Lisbon has wonderful trams and steep hills, number {i}." for i in range(400))
    long = write_jsonl(tmp_path / "long.jsonl", [chat(f"Tell me all about Lisbon ({i})", text) for i in range(10)])
    server = Server(home, {"TUNELAB_TRAINER_MEMORY_LIMIT_MB": "1600"}).start()
    try:
        client = server.client()
        job = finished(server, client.fine_tuning.jobs.create(
            model="tiny", training_file=upload(server, long), hyperparameters={"batch_size": 10}).id)
        assert job.status == "failed" and job.error.code == "out_of_memory", job.error
        assert "smaller batch_size" in job.error.message and "shorter examples" in job.error.message
        nxt = finished(server, client.fine_tuning.jobs.create(
            model="tiny", training_file=upload(server, data / "train.jsonl"),
            hyperparameters={"n_epochs": 1, "batch_size": 2}).id)
        assert nxt.status == "succeeded", nxt.error  # under the same limit
    finally:
        server.stop()
