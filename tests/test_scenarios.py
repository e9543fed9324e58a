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

from conftest import ROOT, free_port, trainers, upload, varied_chats, wait_for, write_jsonl
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
        # An upload's part has its own cap (64 MB), answered as the file's error; every other body is a request.
        expected = b'"file_too_large"' if path.endswith("/parts") else b'"request_too_large"'
        assert expected in answer and time.monotonic() - started < 5
    method, path = routes[0]
    chunked = (b" " * 65536 for _ in range(48))  # 3 MB, no Content-Length
    response = httpx.request(method, root + path, headers={**AUTH, "Content-Type": "application/json"},
                             content=chunked)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


# --- dataset validation ----------------------------------------------------------------------------------------------

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


# --- checkpoints and models: nothing is unpickled ------------------------------------------------------------------

class Planted:
    """Unpickling this touches a marker file: proof that a file was loaded as pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant(directory: Path, names: list[str], marker: Path) -> None:
    for name in names:
        (directory / name).write_bytes(pickle.dumps(Planted(marker)))
    assert not marker.exists()
    pickle.loads((directory / names[0]).read_bytes())  # the payload works: loading it as pickle would show
    assert marker.exists()
    marker.unlink()


def test_crafted_pickles_in_a_checkpoint_are_never_loaded(tiny_model, tmp_path):
    """Scenario 25: `rng_state.pth`, `optimizer.pt`, `scheduler.pt` and `adapter_model.bin` planted beside a real
    checkpoint are never unpickled when the run resumes from it (tests/test_train.py proves the resume exact)."""
    from test_train import Recorder, config
    from tunelab.train.recipe import run

    lines = (ROOT / "examples" / "travel" / "train.jsonl").read_text().splitlines()
    data = (write_jsonl(tmp_path / "train.jsonl", lines[:12]), write_jsonl(tmp_path / "valid.jsonl", lines[12:14]))
    out, stop = tmp_path / "run", threading.Event()
    settings = dict(n_epochs=1, validation_file=None)
    run(config(tiny_model, data, out, **settings), Recorder(1, stop), stop=stop)
    (checkpoint,) = (out / "checkpoints").iterdir()
    marker = tmp_path / "unpickled"
    plant(checkpoint, ["rng_state.pth", "optimizer.pt", "scheduler.pt", "training_args.bin", "adapter_model.bin"],
          marker)
    resumed = Recorder()
    run(config(tiny_model, data, out, **settings), resumed, resume=True)
    assert [m.step for m in resumed.steps] == [2, 3] and not marker.exists()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_base_model_swapped_for_pickle_or_remote_code_is_refused_when_loaded(service, tiny_model, tmp_path, home):
    """Scenario 46: an installed base model whose weights were replaced by a pickle, or whose config asks for
    remote code, is refused with a message saying why when the service loads it; the pickle is never opened."""
    import shutil

    from tunelab.models.catalog import import_model

    client = service.client(max_retries=0)
    marker = tmp_path / "unpickled"
    for name in ("pickled", "remote"):
        import_model(tiny_model, name)
        target = home / "models" / name
        if name == "pickled":
            (target / "model.safetensors").unlink()
            plant(target, ["pytorch_model.bin"], marker)
        else:
            config = json.loads((target / "config.json").read_text())
            (target / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
            shutil.copy(tiny_model / "model.safetensors", target / "model.safetensors")
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert refused.value.body["code"] == "model_refused"
        assert ("pickle" if name == "pickled" else "remote code") in refused.value.message
    assert not marker.exists()


def test_an_adapter_whose_weights_were_swapped_for_a_pickle_is_refused_unread(tiny_model, tmp_path, home):
    """Scenario 25, serving side: a fine-tune's adapter directory holding `adapter_model.bin` instead of its
    safetensors is refused by name; PEFT's fallback to unpickling the .bin is never reached."""
    from peft import LoraConfig

    from tunelab.errors import ModelRefused
    from tunelab.inference.pool import EnginePool
    from tunelab.models.catalog import import_model
    from tunelab.models.registry import Registry
    from tunelab.store.db import Database

    import_model(tiny_model, "tiny")
    adapter = tmp_path / "adapter"
    LoraConfig(r=2, target_modules=["q_proj"], base_model_name_or_path=str(tiny_model)).save_pretrained(adapter)
    marker = tmp_path / "unpickled"
    plant(adapter, ["adapter_model.bin"], marker)
    db = Database(tmp_path / "tunelab.db")
    db.migrate()
    registry = Registry(db, "local")
    with db.write() as conn:
        registry.add_fine_tuned(conn, "ft:tiny:local::swapped", job_id="ftjob-x", base="tiny", parent="tiny",
                                method="lora", path=adapter, owned_by="local")
    with pytest.raises(ModelRefused, match="adapter_model.safetensors.*pickle weights"):
        EnginePool(registry).target("ft:tiny:local::swapped")
    assert not marker.exists()


def test_the_package_fetches_no_url_a_request_chooses():
    """Scenario 47: no request field makes the service fetch a URL of the client's choosing, so there is nothing to
    turn against 127.0.0.1, 10/8 or 169.254.169.254. The one URL field, a deployment's engine
    (`properties.engine.url`), takes only the engines the operator listed in TUNELAB_ENGINE_URLS (tests/
    test_engines.py refuses one that is not); image parts in chat are refused before any model work (tests/
    test_chat.py). Network code lives in the two modules that talk to engines, and the CLI (which talks only to
    the tunelab service it is pointed at)."""
    from tunelab.app import create_app

    spec = create_app(run_worker=False).openapi()
    fields = re.findall(r'"(\w*(?:url|uri|href))"\s*:\s*\{', json.dumps(spec), re.IGNORECASE)
    assert sorted(fields) == ["report_url", "url"], fields  # report_url: a response's link to the studio, never fetched
    assert "url" in spec["components"]["schemas"]["EngineRef"]["properties"]
    network = re.compile(r"^\s*(?:import|from)\s+(?:httpx|requests|aiohttp|urllib\.request|urllib3|http\.client|"
                         r"huggingface_hub)\b|hf_hub_download|snapshot_download|urlopen|create_connection",
                         re.MULTILINE)
    engines = {ROOT / "tunelab" / "inference" / "remote.py", ROOT / "tunelab" / "deploy" / "engines.py"}
    for path in (ROOT / "tunelab").rglob("*.py"):
        if path.parent.name != "cli" and path not in engines:
            assert not network.search(path.read_text()), path


# --- the state database under contention -----------------------------------------------------------------------------

def _write_jobs(path: str, process: int, threads: int, writes: int, results) -> None:
    from tunelab.jobs.queue import Queue
    from tunelab.store.db import Database

    queue = Queue(Database(Path(path)))
    errors, latencies = [], []

    def writer(thread: int) -> None:
        for i in range(writes):
            started = time.monotonic()
            try:  # read, then write, in one transaction: as creating a job does
                with queue.db.write() as conn:
                    assert not queue.output_taken(conn, f"ft:m:local::{process}-{thread}-{i}")
                    queue.add(f"ftjob-{process}-{thread}-{i}", {"training_file": "file-x"}, status="queued",
                              conn=conn, output_model=f"ft:m:local::{process}-{thread}-{i}")
            except Exception as exc:  # every one is reported and fails the test
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.monotonic() - started)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put((errors, latencies))


def test_fifty_writers_in_five_processes_beside_heartbeats_reaper_and_readers_never_see_a_lock(tmp_path):
    """Scenario 30: 50 writers (5 processes x 10 threads) add jobs while this process heartbeats a lease, runs the
    reaper and reads pages of jobs: no write fails (no 'database is locked'), the heartbeats keep the lease
    alive through it all, and the write-ahead log stays bounded because no reader here holds a snapshot."""
    from tunelab.jobs.queue import Queue
    from tunelab.store.db import Database

    path = tmp_path / "tunelab.db"
    db = Database(path)
    db.migrate()
    queue = Queue(db, lease_seconds=2)
    queue.add("ftjob-held", {}, status="queued")
    lease = queue.claim("w-main")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    writers = [context.Process(target=_write_jobs, args=(str(path), p, 10, 10, results)) for p in range(5)]
    done, problems, beats = threading.Event(), [], [0]

    def heartbeat_and_reap() -> None:
        own = Queue(Database(path), lease_seconds=2)
        while not done.is_set():
            try:
                own.heartbeat(lease)
                own.reap()
                beats[0] += 1
            except Exception as exc:  # reported below
                problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def read_pages() -> None:
        own = Queue(Database(path))
        while not done.is_set():
            try:
                own.page(after=None, limit=50, metadata={})
            except Exception as exc:  # reported below
                problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.005)

    side = [threading.Thread(target=heartbeat_and_reap)] + [threading.Thread(target=read_pages) for _ in range(2)]
    for t in writers + side:  # fork before this process has threads of its own
        t.start()
    outcomes = [results.get(timeout=120) for _ in writers]
    for w in writers:
        w.join(30)
    done.set()
    for t in side:
        t.join()
    errors = [e for errs, _ in outcomes for e in errs] + problems
    assert errors == []
    latencies = sorted(x for _, lat in outcomes for x in lat)
    assert len(latencies) == 500 and db.query("SELECT count(*) FROM jobs")[0][0] == 501
    assert queue.holds(lease) and beats[0] > 0
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size < 8 << 20
    print(f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, p99 {latencies[int(0.99 * len(latencies))] * 1000:.0f}"
          f" ms, max {latencies[-1] * 1000:.0f} ms, heartbeats {beats[0]}, WAL {wal.stat().st_size} bytes")


# --- serving ---------------------------------------------------------------------------------------------------------

ASK = [{"role": "user", "content": "Where should I go in May?"}]


def test_a_model_or_deployment_that_is_not_there_is_a_404_naming_it(service):
    """Scenario 32: a model never deployed, and a deployment that was deleted, answer 404 in the envelope:
    `model_not_found` on the OpenAI route, Azure's `DeploymentNotFound` on the deployment route."""
    client = service.client(max_retries=0)
    http = httpx.Client(headers=AUTH)
    root = service.base_url.removesuffix("/v1")
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="never-deployed", messages=ASK, max_tokens=2)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    assert "never-deployed" in missing.value.message

    assert http.put(f"{service.base_url}/deployments/gone-soon", json={
        "sku": {"name": "Standard", "capacity": 5},
        "properties": {"model": {"format": "OpenAI", "name": "tiny"}}}).status_code == 201
    deadline = time.monotonic() + 60
    while http.get(f"{service.base_url}/deployments/gone-soon").json()["properties"]["provisioningState"] != \
            "Succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.chat.completions.create(model="gone-soon", messages=ASK, max_tokens=2).choices
    assert http.delete(f"{service.base_url}/deployments/gone-soon").status_code == 204
    with pytest.raises(openai.NotFoundError) as deleted:
        client.chat.completions.create(model="gone-soon", messages=ASK, max_tokens=2)
    assert deleted.value.body["code"] == "model_not_found"
    azure = http.post(f"{root}/openai/deployments/gone-soon/chat/completions?api-version=2024-10-21",
                      json={"model": "gone-soon", "messages": ASK, "max_tokens": 2})
    assert azure.status_code == 404 and azure.json()["error"]["code"] == "DeploymentNotFound", azure.text


def test_out_of_range_chat_parameters_are_refused_before_any_model_work(service):
    """Scenario 38: negative temperature or max_tokens, n out of its caps, wrong types and malformed fields are
    a 400 naming the parameter, and the model is never even loaded for them."""
    client = service.client(max_retries=0)
    cases = [
        (dict(temperature=-0.5), "temperature"), (dict(max_tokens=-5), "max_tokens"), (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n"), (dict(n=10**9), "n"), (dict(max_tokens="ten"), "max_tokens"), (dict(top_p=0), "top_p"),
        (dict(top_logprobs=21), "top_logprobs"), (dict(presence_penalty=9), "presence_penalty"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"), (dict(messages="hello"), "messages"),
        (dict(messages=[{"content": "no role"}]), "messages.0.role"), (dict(model=""), "model"),
        (dict(max_completion_tokens=-1), "max_completion_tokens"),
    ]
    for extra, param in cases:
        body = {"model": "tiny", "messages": ASK, **extra}
        with pytest.raises(openai.BadRequestError) as caught:
            client.post("/chat/completions", body=body, cast_to=object)
        error = caught.value.body
        assert error["param"] == param and error["type"] == "invalid_request_error", (extra, error)
    assert service.app.state.service.pool.engines == {}  # no model was loaded to refuse them


def text_found_under(root: Path, needle: bytes) -> list[str]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if needle in path.read_bytes():
                found.append(str(path.relative_to(root)))
    return found


def test_after_delete_no_byte_of_a_training_file_remains(service, tmp_path, home):
    """Scenario 48: a file a job used is refused while the job is unfinished; once deleted (the job and its
    fine-tune kept), not one copy of its text is left anywhere under TUNELAB_HOME: not in the uploads, the job's
    run directory and log, a temporary file or the database and its write-ahead log."""
    client = service.client(max_retries=0)
    secret = "Quokka-7f3e9b-itinerary"
    rows = [dict(r, messages=r["messages"][:-1] + [{"role": "assistant", "content": f"{secret} {i}: enjoy it?"}])
            for i, r in enumerate(varied_chats(12))]
    train = upload(client, tmp_path, rows)
    client.get(f"/files/{train.id}/report?model=tiny", cast_to=object)  # the pre-flight report reads it too
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
    with pytest.raises(openai.BadRequestError) as in_use:
        client.files.delete(train.id)
    assert job.id in in_use.value.message
    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    assert text_found_under(home, secret.encode())  # the text was there to be found
    assert client.files.delete(train.id).deleted
    client.post("/storage/compact", cast_to=object)
    assert text_found_under(home, secret.encode()) == []
    with pytest.raises(openai.NotFoundError):
        client.files.content(train.id)
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
