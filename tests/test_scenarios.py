"""Failure scenarios not covered elsewhere, each against the real part: an upload cut off by its client, hostile JSON
bodies on every route, a training file gone before validation, claims from several processes, fencing of a
reaped trainer, crafted pickles in a checkpoint, concurrent writers from several processes, chat requests refused
before any model work, and deletion that leaves no byte behind. docs/reliability.md maps them to the scenarios."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from conftest import ROOT, free_port, upload, varied_chats, wait_for, write_jsonl
from test_service import every_route

AUTH = {"Authorization": "Bearer test-key"}


def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    """Send a hand-made HTTP/1.1 request on a socket; return what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b'"error"' in answer and answer.rstrip().endswith(b"}"):
                break
        return answer


def port_of(service) -> int:
    return int(service.base_url.rsplit(":", 1)[1].split("/")[0])


# --- uploads -------------------------------------------------------------------------------------------------------

def test_an_upload_cut_off_by_its_client_keeps_nothing_and_its_retry_succeeds_once(service, tmp_path, home):
    """Scenario 2: the client hangs up mid-file; no row, no temporary bytes; the retry under the same
    Idempotency-Key then creates the file, and a second retry replays it."""
    client = service.client(max_retries=0)
    body = write_jsonl(tmp_path / "train.jsonl", varied_chats(12)).read_bytes()
    start = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
             b'--b\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n\r\n')
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-key\r\n"
            f"Idempotency-Key: up-1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(start) + len(body) + 200}")
    files_dir = home / "state" / "files"
    with socket.create_connection(("127.0.0.1", port_of(service)), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + start + body[: len(body) // 2])
        deadline = time.monotonic() + 10
        while not (files_dir.is_dir() and any(files_dir.iterdir())):  # the server is writing the file
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and files_dir.is_dir() and any(files_dir.iterdir()):
        time.sleep(0.05)
    assert not files_dir.is_dir() or list(files_dir.iterdir()) == []  # the half-written temp file is gone
    assert client.files.list().data == []

    again = dict(file=("train.jsonl", body), purpose="fine-tune", extra_headers={"Idempotency-Key": "up-1"})
    first = client.files.create(**again)
    assert first.bytes == len(body) and client.files.create(**again).id == first.id
    assert [f.id for f in client.files.list()] == [first.id]
    assert sorted(p.name for p in files_dir.iterdir()) == [first.id]


def write_routes(app, *, json_body: bool) -> list[tuple[str, str]]:
    """(method, path) of every POST/PUT/PATCH route but the file upload (or only those reading a JSON body),
    path parameters filled with harmless values."""
    found = []
    for route in every_route(app.routes):
        if json_body and getattr(route, "body_field", None) is None:
            continue
        if route.path.endswith("/files"):
            continue
        for method in sorted((getattr(route, "methods", None) or set()) & {"POST", "PUT", "PATCH"}):
            found.append((method, re.sub(r"\{[^}]+\}", "x-1", route.path)))
    return found


def test_hostile_json_bodies_on_every_route_are_refused_before_parsing(service):
    """Scenario 7: a body nested 100,000 deep is a 400, a declared 100 MB body a 413 read no further, and a body
    past the cap without Content-Length a 413; never a 5xx (no RecursionError reaches the client)."""
    routes = write_routes(service.app, json_body=True)
    assert len(routes) >= 3 * 6  # every JSON route, under /v1, /openai and /openai/v1
    root = service.base_url.removesuffix("/v1")
    for opener in ("[", '{"a":'):
        deep = (opener * 100_000).encode()
        for method, path in routes:
            response = httpx.request(method, root + path, headers={**AUTH, "Content-Type": "application/json"},
                                     content=deep)
            assert response.status_code == 400, (method, path, response.status_code, response.text[:200])
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert "Recursion" not in response.text
    for method, path in write_routes(service.app, json_body=False):
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-key\r\n"
                f"Content-Type: application/json\r\nContent-Length: {100 << 20}")
        started = time.monotonic()
        answer = raw_request(port_of(service), head, b'{"model": "')
        assert answer.startswith(b"HTTP/1.1 413"), (method, path, answer[:200])
        assert b'"request_too_large"' in answer and time.monotonic() - started < 5
    method, path = routes[0]
    chunked = (b" " * 65536 for _ in range(48))  # 3 MB, no Content-Length
    response = httpx.request(method, root + path, headers={**AUTH, "Content-Type": "application/json"},
                             content=chunked)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


# --- dataset validation ----------------------------------------------------------------------------------------------

def trainers(job_id: str) -> list[int]:
    """Training processes alive for `job_id`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"tunelab.jobs.runner" in cmdline and job_id.encode() in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="inspects processes through /proc")
def test_a_training_file_gone_before_validation_fails_its_job_and_the_worker_goes_on(service, tmp_path, home):
    """Scenario 13: the bytes of a training file vanish between job creation and validation: the job fails
    naming `training_file`, and the worker validates and trains the next job. Scenario 28: cancelling that
    running job ends its training process within seconds; cancelling it again changes nothing."""
    client = service.client(max_retries=0)
    gone = upload(client, tmp_path, varied_chats(12), "gone.jsonl")
    kept = upload(client, tmp_path, varied_chats(40), "kept.jsonl")
    (home / "state" / "files" / gone.id).unlink()
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=gone.id).id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert job.error.code == "invalid_training_file" and gone.id in job.error.message
    assert "deleted" in job.error.message and "Traceback" not in job.error.message
    assert not (home / "state" / "jobs" / job.id).exists()  # nothing trained

    slow = client.fine_tuning.jobs.create(model="tiny", training_file=kept.id,
                                          hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for(client, slow.id, statuses=("running",))
    deadline = time.monotonic() + 60
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(slow.id).data):
        assert time.monotonic() < deadline, "the second job never trained"
        time.sleep(0.1)
    assert trainers(slow.id)
    started = time.monotonic()
    assert client.fine_tuning.jobs.cancel(slow.id).status == "cancelled"
    while trainers(slow.id):
        assert time.monotonic() - started < 5, "the training process outlived its cancel"
        time.sleep(0.05)
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(slow.id)
    assert "cannot cancel" in again.value.message and client.fine_tuning.jobs.retrieve(slow.id).status == "cancelled"


def test_a_training_file_row_deleted_under_a_created_job_fails_it_by_name(tmp_path):
    """Scenario 13, the race: a delete that ran its in-use check just before the job committed leaves the job
    pointing at no file; the worker fails it naming `training_file` instead of crashing."""
    from tunelab.config import Settings
    from tunelab.jobs.queue import Queue
    from tunelab.jobs.worker import Worker
    from tunelab.store.db import Database
    from tunelab.store.files import Files

    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    files = Files(db, tmp_path / "files", 1 << 20)
    queue = Queue(db)
    file_id, writer = files.writer()
    with writer:
        writer.write(write_jsonl(tmp_path / "t.jsonl", varied_chats(12)).read_bytes())
        files.add(file_id, writer, "t.jsonl", "fine-tune")
    queue.add("ftjob-race", {"training_file": file_id, "validation_file": None})
    with db.write() as conn:
        files.delete(file_id, conn)
    worker = Worker(Settings(home=tmp_path / "home"), db, queue, files)
    worker.tick()
    row = queue.get("ftjob-race")
    error = json.loads(row["error"])
    assert row["status"] == "failed" and error["param"] == "training_file" and file_id in error["message"]


# --- the job queue ---------------------------------------------------------------------------------------------------

def _claim_once(path: str, barrier, results) -> None:
    from tunelab.jobs.queue import Queue
    from tunelab.store.db import Database

    queue = Queue(Database(Path(path)), lease_seconds=60)
    barrier.wait()
    lease = queue.claim(f"worker-{os.getpid()}")
    results.put((os.getpid(), lease.job_id if lease else None, lease.token if lease else None))


def test_workers_in_separate_processes_claiming_at_once_get_one_lease(tmp_path):
    """Scenario 18: six processes, each with its own connection, claim the same single job at the same instant,
    twenty times over: exactly one lease each time, and the job's row names that winner."""
    from tunelab.jobs.queue import Queue
    from tunelab.store.db import Database

    path = tmp_path / "tunelab.db"
    db = Database(path)
    db.migrate()
    queue = Queue(db)
    context = multiprocessing.get_context("fork")
    for round_ in range(20):
        queue.add(f"ftjob-{round_:02d}", {}, status="queued")
        barrier, results = context.Barrier(6), context.Queue()
        workers = [context.Process(target=_claim_once, args=(str(path), barrier, results)) for _ in range(6)]
        for w in workers:
            w.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        winners = [o for o in outcomes if o[1] is not None]
        assert len(winners) == 1, outcomes
        row = queue.get(f"ftjob-{round_:02d}")
        assert (row["status"], row["lease_token"], row["lease_owner"]) == \
            ("running", winners[0][2], f"worker-{winners[0][0]}")


def test_a_reaped_trainer_cannot_write_progress_over_the_new_owner(tmp_path):
    """Scenario 19: a trainer that stalled past its lease wakes up after the job was reaped and claimed again:
    its hyperparameters, metrics, messages and checkpoints are all refused, and only the new owner's remain."""
    from tunelab.jobs.events import JobReporter
    from tunelab.jobs.queue import LeaseLost, Queue
    from tunelab.models.registry import Registry
    from tunelab.store.db import Database
    from tunelab.train.metrics import StepMetrics

    now = [1_000.0]
    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    queue = Queue(db, lease_seconds=30, clock=lambda: now[0])
    registry = Registry(db, "local")
    queue.add("ftjob-f", {}, status="queued")
    stale = JobReporter(db, queue, registry, queue.claim("w1"), "ft:m:local::f")
    hyper = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0, "learning_rate": 1e-4}
    stale.start(hyper, 10, 0)
    now[0] += 31
    assert queue.reap() == ["ftjob-f"]
    fresh = JobReporter(db, queue, registry, queue.claim("w2"), "ft:m:local::f")
    fresh.start({**hyper, "n_epochs": 2}, 20, 0)

    def metrics(step):
        return StepMetrics(step=step, total_steps=10, epoch=0, train_loss=1.0, train_mean_token_accuracy=0.5,
                           tokens=10, tokens_per_second=1.0, eta_seconds=1.0)

    events_before = db.query("SELECT count(*) FROM job_events")[0][0]
    for write in (lambda: stale.start(hyper, 10, 0), lambda: stale.step(metrics(1)),
                  lambda: stale.message("stale"), lambda: stale.checkpoint(1, tmp_path, {})):
        with pytest.raises(LeaseLost):
            write()
    assert db.query("SELECT count(*) FROM job_events")[0][0] == events_before
    assert db.query("SELECT count(*) FROM checkpoints")[0][0] == 0
    assert json.loads(queue.get("ftjob-f")["hyperparameters"])["n_epochs"] == 2
    fresh.step(metrics(1))  # the new owner still writes
    assert db.query("SELECT count(*) FROM job_events")[0][0] == events_before + 1
