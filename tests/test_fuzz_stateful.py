"""Stateful contract fuzzing: hypothesis drives the in-process app through random chains of uploads, fine-tuning
jobs and their cancel / pause / resume / delete, on `/v1` and on Azure's `/openai` mirrors, and checks every answer.

    pytest tests/test_fuzz_stateful.py                  # the short run of `make test`
    TUNELAB_FUZZ=long pytest tests/test_fuzz_stateful.py   # the long run of `make fuzz`

The machine keeps its own model of every file and job and checks each answer against it: never a 5xx, every
error in the OpenAI envelope without traceback text, job statuses only along the legal transitions, a deleted
file or job answers 404, and a file an unfinished job reads cannot be deleted. The worker's side runs the real
worker code (`Worker.validate`, the queue's claim / heartbeat / finish / release) as rules of the machine, so a
job reaches `running` and `paused` without a training process and the test stays fast.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from tunelab.api.jobs import service as jobs_service
from tunelab.app import create_app
from tunelab.config import Settings
from tunelab.jobs.queue import FINAL, LeaseLost
from tunelab.jobs.worker import Worker
from tunelab.store import blobs

from conftest import varied_chats

LONG = os.environ.get("TUNELAB_FUZZ") == "long"
KEY = "test-key"

# Where a job may go next: the worker's moves and the client's. Anything else is a bug, whoever made it.
LEGAL = {
    "validating_files": {"queued", "failed", "cancelled"},
    "queued": {"running", "cancelled"},
    "running": {"paused", "cancelled", "failed", "succeeded", "queued"},
    "paused": {"queued", "cancelled"},
    "succeeded": set(), "failed": set(), "cancelled": set(),
}
ACTIVE = ("validating_files", "queued", "running", "paused")
OUTCOMES = st.sampled_from(["work", "work", "work", "fail", "release"])  # of a running job's next worker turn

# What a file holds decides how validation ends: a valid training set, a bad line 4, too few examples.
CONTENTS = {
    "train": "".join(json.dumps(row) + "\n" for row in varied_chats(12)).encode(),
    "bad": "".join(json.dumps(row) + "\n" for row in varied_chats(3)).encode() + b'{"messages": [\n'
           + "".join(json.dumps(row) + "\n" for row in varied_chats(9)).encode(),
    "small": "".join(json.dumps(row) + "\n" for row in varied_chats(3)).encode(),
}
# Hostile names (scenario 4): stored under the generated id, the name kept only as clean metadata.
FILENAMES = ["train.jsonl", "../../etc/cron.d/tunelab-x.jsonl", "/abs/path/tunelab-x.jsonl", "a\x00b.jsonl",
             "..\\..\\tunelab-x.jsonl", "\u2024\u2024/tunelab-x.jsonl", "n" * 4090 + ".jsonl", "données é.jsonl"]


def check_answer(response) -> dict | None:
    """What every answer must be, whatever was asked: no 5xx, errors in the envelope, no traceback."""
    text = response.text
    assert response.status_code < 500, (response.request.method, response.request.url, response.status_code, text)
    assert "Traceback" not in text and 'File "/' not in text, text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert {"message", "type", "param", "code"} <= set(error), body
        assert isinstance(error["message"], str) and error["message"].strip(), body
        assert isinstance(error["type"], str), body
        return error
    return None


class ServiceMachine(RuleBasedStateMachine):
    files = Bundle("files")

    def __init__(self):
        super().__init__()
        ServiceMachine.examples += 1
        self.home = ServiceMachine.root / f"ex{ServiceMachine.examples}"
        self.app = create_app(Settings(home=self.home, api_key=KEY, lease_seconds=60), run_worker=False)
        self.http = TestClient(self.app, raise_server_exceptions=False)
        self.http.__enter__()
        services = self.app.state.service
        self.queue = services.queue
        self.worker = Worker(services.settings, services.db, services.queue, services.store)
        self.file_kind: dict[str, str] = {}  # id → kind of content
        self.deleted_files: set[str] = set()
        self.job: dict[str, dict] = {}  # id → {"status", "training", "validation", "requested"}
        self.deleted_jobs: set[str] = set()
        self.leases: dict = {}
        self.keys: dict[str, tuple[dict, str]] = {}  # Idempotency-Key → (request body, job id)
        self.steps = 0

    def teardown(self):
        try:
            self.check_listings("/v1")
        finally:
            self.http.__exit__(None, None, None)

    # --- how requests are sent ------------------------------------------------------------------------------

    def call(self, method: str, path: str, prefix: str, azure_header: bool = False, **kwargs):
        """One request through `prefix` (`/v1`, `/openai`, `/openai/v1`), with the key as Azure or OpenAI send it."""
        headers = {"api-key": KEY} if azure_header else {"Authorization": f"Bearer {KEY}"}
        headers.update(kwargs.pop("headers", {}))
        params = {"api-version": "2024-10-21"} if prefix.startswith("/openai") else {}
        params.update(kwargs.pop("params", {}))
        response = self.http.request(method, prefix + path, headers=headers, params=params, **kwargs)
        check_answer(response)
        return response

    def saw(self, job_id: str, status: str) -> None:
        """Record a status the service showed; it must follow from the last one by a legal move."""
        before = self.job[job_id]["status"]
        assert status == before or status in LEGAL[before], f"{job_id}: {before} -> {status}"
        self.job[job_id]["status"] = status

    def unfinished_reader(self, file_id: str) -> bool:
        return any(j["status"] in ACTIVE and file_id in (j["training"], j["validation"])
                   for job_id, j in self.job.items() if job_id not in self.deleted_jobs)

    @initialize(target=files)
    def first_upload(self):
        return self.send_file("train", "train.jsonl", "/v1", False)

    # --- the client: files -----------------------------------------------------------------------------------

    @rule(target=files, kind=st.sampled_from(["train", "train", "train", "bad", "small"]), name=st.sampled_from(FILENAMES),
          prefix=st.sampled_from(["/v1", "/openai", "/openai/v1"]), azure=st.booleans())
    def upload(self, kind, name, prefix, azure):
        return self.send_file(kind, name, prefix, azure)

    def send_file(self, kind, name, prefix, azure):
        response = self.call("POST", "/files", prefix, azure, data={"purpose": "fine-tune"},
                             files={"file": (name, CONTENTS[kind], "application/jsonl")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["bytes"] == len(CONTENTS[kind]) and body["purpose"] == "fine-tune"
        stored = body["filename"]
        assert not set(stored) & {"/", "\\", "\x00"} and len(stored) <= 255 and not stored.startswith("."), stored
        self.file_kind[body["id"]] = kind
        return body["id"]

    @rule(file_id=files, prefix=st.sampled_from(["/v1", "/openai"]))
    def retrieve_file(self, file_id, prefix):
        meta = self.call("GET", f"/files/{file_id}", prefix)
        content = self.call("GET", f"/files/{file_id}/content", prefix)
        if file_id in self.deleted_files:
            assert meta.status_code == content.status_code == 404, (meta.text, content.text)
        else:
            assert meta.status_code == 200 and meta.json()["id"] == file_id
            assert content.status_code == 200 and content.content == CONTENTS[self.file_kind[file_id]]

    @rule(file_id=files, prefix=st.sampled_from(["/v1", "/openai"]), azure=st.booleans())
    def delete_file(self, file_id, prefix, azure):
        response = self.call("DELETE", f"/files/{file_id}", prefix, azure)
        if file_id in self.deleted_files:
            assert response.status_code == 404, response.text
        elif self.unfinished_reader(file_id):
            # Refused, and the file is still there. (The status is 400 today; scenario 48 wants 409, see
            # test_deleting_a_file_in_use_is_a_conflict.)
            assert response.status_code in (400, 409) and response.json()["error"]["param"] == "file_id", response.text
            assert self.call("GET", f"/files/{file_id}", prefix).status_code == 200
        else:
            assert response.status_code == 200 and response.json()["deleted"] is True, response.text
            self.deleted_files.add(file_id)

    # --- the client: jobs ------------------------------------------------------------------------------------

    @rule(data=st.data(), prefix=st.sampled_from(["/v1", "/openai"]), azure=st.booleans(),
          key=st.none() | st.sampled_from(["k1", "k2"]), seed=st.sampled_from([1, 2]))
    def create_job(self, data, prefix, azure, key, seed):
        """Mostly from files that still exist; sometimes from any file ever uploaded (a deleted one: 400)."""
        # In creation order, never sorted: ids are random, and a replayed case must draw the same files.
        live = [f for f in self.file_kind if f not in self.deleted_files]
        pick = st.sampled_from(live) if live and data.draw(st.integers(0, 4)) else st.sampled_from(list(self.file_kind))
        training = data.draw(pick)
        validation = data.draw(st.none() | st.none() | pick)
        body = {"model": "tiny", "training_file": training, "seed": seed,
                "hyperparameters": {"n_epochs": 1, "batch_size": 1}}
        if validation is not None:
            body["validation_file"] = validation
        response = self.call("POST", "/fine_tuning/jobs", prefix, azure, json=body,
                             headers={"Idempotency-Key": key} if key else {})
        error = response.json().get("error") or {}
        if training in self.deleted_files:
            assert response.status_code == 400 and error["param"] == "training_file", response.text
            return
        if validation in self.deleted_files or validation == training:
            assert response.status_code == 400 and error["param"] == "validation_file", response.text
            return
        earlier = self.keys.get(key)
        if earlier and earlier[1] not in self.deleted_jobs:  # a deleted job's key is forgotten with it
            if earlier[0] != body:
                assert response.status_code == 422 and error["code"] == "idempotency_key_reused", response.text
                return
            assert response.status_code == 200 and response.json()["id"] == earlier[1], response.text
            self.saw(earlier[1], response.json()["status"])
            return
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["id"] not in self.job and job["status"] == "validating_files", job
        assert job["training_file"] == training and job["validation_file"] == validation, job
        self.job[job["id"]] = {"status": "validating_files", "training": training, "validation": validation,
                               "requested": None}
        if key:
            self.keys[key] = (body, job["id"])

    def create_job_from(self, file_id: str, prefix: str) -> str:
        response = self.call("POST", "/fine_tuning/jobs", prefix, json={"model": "tiny", "training_file": file_id})
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        self.job[job_id] = {"status": "validating_files", "training": file_id, "validation": None, "requested": None}
        return job_id

    def pick_job(self, data) -> str:
        """A job that still exists, mostly; now and then a deleted one (404 from then on)."""
        live = [j for j in self.job if j not in self.deleted_jobs]
        if live and data.draw(st.integers(0, 5)):
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from(list(self.job)))

    @precondition(lambda self: self.job)
    @rule(data=st.data(), prefix=st.sampled_from(["/v1", "/openai", "/openai/v1"]))
    def retrieve_job(self, data, prefix):
        self.worker_runs_meanwhile(data)
        self.check_job(self.pick_job(data), prefix)

    def worker_runs_meanwhile(self, data):
        """The worker runs beside the clients: a few of its turns may fall between two requests."""
        for _ in range(data.draw(st.integers(0, 2))):
            self.worker_ticks(data.draw(OUTCOMES))

    def check_job(self, job_id, prefix):
        response = self.call("GET", f"/fine_tuning/jobs/{job_id}", prefix)
        events = self.call("GET", f"/fine_tuning/jobs/{job_id}/events", prefix)
        checkpoints = self.call("GET", f"/fine_tuning/jobs/{job_id}/checkpoints", prefix)
        if job_id in self.deleted_jobs:
            assert response.status_code == events.status_code == checkpoints.status_code == 404
            return
        assert response.status_code == events.status_code == checkpoints.status_code == 200
        job = response.json()
        self.saw(job_id, job["status"])
        assert job["status"] == self.job[job_id]["status"]
        assert (job["error"] is not None) == (job["status"] == "failed"), job
        assert events.json()["data"], "a job has events from its creation on"

    @precondition(lambda self: self.job)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "pause", "resume"]),
          prefix=st.sampled_from(["/v1", "/openai", "/openai/v1"]), azure=st.booleans())
    def act_on_job(self, data, action, prefix, azure):
        """Half the time on a running or paused job when there is one: where pause and resume mean something."""
        moving = [j for j, state in self.job.items() if state["status"] in ("running", "paused")
                  and j not in self.deleted_jobs]
        job_id = data.draw(st.sampled_from(moving)) if moving and data.draw(st.booleans()) else self.pick_job(data)
        self.act(job_id, action, prefix, azure)
        self.worker_runs_meanwhile(data)

    def act(self, job_id, action, prefix, azure):
        response = self.call("POST", f"/fine_tuning/jobs/{job_id}/{action}", prefix, azure)
        if job_id in self.deleted_jobs:
            assert response.status_code == 404, response.text
            return
        state = self.job[job_id]
        status = state["status"]
        legal = {"cancel": ACTIVE, "pause": ("running",), "resume": ("paused",)}[action]
        if status not in legal or (action == "pause" and state["requested"] == "cancel"):
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "fine_tuning_job_id"
            return
        assert response.status_code == 200, response.text
        if status == "running":  # the worker carries it out at its next heartbeat
            expected = "running"
            state["requested"] = action
        else:
            expected = {"cancel": "cancelled", "resume": "queued"}[action]
        self.saw(job_id, response.json()["status"])
        assert response.json()["status"] == expected, (status, action, response.text)

    @precondition(lambda self: self.job)
    @rule(data=st.data(), prefix=st.sampled_from(["/v1", "/openai"]))
    def delete_some_job(self, data, prefix):
        self.delete_job(self.pick_job(data), prefix)

    def delete_job(self, job_id, prefix):
        response = self.call("DELETE", f"/fine_tuning/jobs/{job_id}", prefix)
        if job_id in self.deleted_jobs:
            assert response.status_code == 404, response.text
        elif self.job[job_id]["status"] not in FINAL:
            assert response.status_code == 400, response.text
        else:
            assert response.status_code == 200 and response.json()["deleted"] is True, response.text
            self.deleted_jobs.add(job_id)

    @rule(unknown=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
        lambda u: u not in (".", "..")),  # dot segments: the client resolves them before sending
          what=st.sampled_from(["GET /files/{}", "DELETE /files/{}", "GET /files/{}/content",
                                "GET /fine_tuning/jobs/{}", "POST /fine_tuning/jobs/{}/cancel",
                                "DELETE /fine_tuning/jobs/{}", "GET /fine_tuning/jobs/{}/events"]),
          prefix=st.sampled_from(["/v1", "/openai"]))
    def unknown_ids(self, unknown, what, prefix):
        method, path = what.split(" ")
        response = self.call(method, path.format(quote(unknown, safe="")), prefix)
        assert response.status_code in (400, 404), response.text

    # --- the worker's side, through the real worker and queue code ------------------------------------------

    @rule(outcome=OUTCOMES)
    def worker_ticks(self, outcome):
        """One turn of the worker: check new jobs' files, start the oldest queued job when none runs, and move
        the running one: a heartbeat that honours a pending cancel or pause, a failure, or a lost process."""
        self.validate_new_jobs()
        if not self.leases:
            lease = self.queue.claim("fuzz-worker")
            if lease is not None:
                self.leases[lease.job_id] = lease
                self.saw(lease.job_id, "running")
                return
        for job_id, lease in list(self.leases.items()):
            self.step(job_id, lease, outcome)

    def validate_new_jobs(self):
        for job_id in self.queue.validating():
            self.worker.validate(job_id)
            state = self.job[job_id]
            training, validation = self.file_kind[state["training"]], (
                self.file_kind[state["validation"]] if state["validation"] else None)
            row = self.queue.get(job_id)
            if training == "train" and validation in (None, "train", "small"):
                assert row["status"] == "queued", (training, validation, row["error"])
            else:
                error = json.loads(row["error"])
                expected = {"small": "invalid_n_examples", "bad": "invalid_training_file"}.get(training) or \
                    "invalid_validation_file"
                assert row["status"] == "failed" and error["code"] == expected, (training, validation, error)
                assert error["param"] == ("validation_file" if training == "train" else "training_file"), error
                assert "line 4" in error["message"] or error["code"] == "invalid_n_examples", error
            self.saw(job_id, row["status"])

    def step(self, job_id, lease, outcome):
        state = self.job[job_id]
        try:
            requested = self.queue.heartbeat(lease)
        except LeaseLost:
            raise AssertionError(f"{job_id} lost its lease while {state['status']}") from None
        assert requested == state["requested"], (requested, state)
        if requested or outcome == "fail":
            status = {"cancel": "cancelled", "pause": "paused", None: "failed"}[requested]
            error = {"code": "training_process_died", "param": None, "message": "the training process exited"}
            self.queue.finish(lease, status, **({"error": error} if status == "failed" else {}))
        elif outcome == "release":
            status = self.queue.release(lease, error={"code": "worker_lost", "param": None, "message": "lost"})
            assert status == ("failed" if lease.attempt >= self.queue.max_attempts else "queued"), status
        else:
            return
        del self.leases[job_id]
        state["requested"] = None
        self.saw(job_id, status)

    @invariant()
    def listings_match(self):
        """Every few steps, and at the end: both lists hold exactly what exists, each job in the status the
        machine expects."""
        self.steps += 1
        if self.steps % 4 == 0:
            self.check_listings(("/v1", "/openai", "/openai/v1")[self.steps // 4 % 3])

    def check_listings(self, prefix):
        files = self.call("GET", "/files", prefix)
        assert files.status_code == 200
        assert {f["id"] for f in files.json()["data"]} == set(self.file_kind) - self.deleted_files
        jobs = self.call("GET", "/fine_tuning/jobs", prefix, params={"limit": 100})
        assert jobs.status_code == 200
        shown = {j["id"]: j["status"] for j in jobs.json()["data"]}
        assert set(shown) == set(self.job) - self.deleted_jobs
        for job_id, status in shown.items():
            self.saw(job_id, status)
            assert status == self.job[job_id]["status"], (job_id, status, self.job[job_id])

    @invariant()
    def nothing_written_under_a_client_name(self):
        """Bytes go under generated ids only: no hostile name reached the file system, inside the home or out."""
        assert not Path("/etc/cron.d/tunelab-x.jsonl").exists() and not Path("/abs/path/tunelab-x.jsonl").exists()
        assert not list(ServiceMachine.root.parent.rglob("*tunelab-x*"))


ServiceMachine.examples = 0


@pytest.fixture
def machine_root(tmp_path, tiny_model, monkeypatch):
    from tunelab.models.catalog import import_model

    import_model(tiny_model, "tiny")  # into $TUNELAB_HOME, where the catalog looks; each example has its own state
    # A cancel or pause of a running job answers at once, as if the worker were slow; the worker rules finish it.
    monkeypatch.setattr(jobs_service, "SETTLE_SECONDS", 0)
    # Ids in creation order, so that a replayed case sees its files and jobs in the same order (the queue starts
    # the oldest job first, by id within a second) and hypothesis can shrink a failure.
    counter = itertools.count(1)
    monkeypatch.setattr(blobs, "secrets", SimpleNamespace(token_hex=lambda n: f"{next(counter):0{2 * n}x}"))
    # The examples' state lives in memory where there is a tmpfs: the contract is under test here, not
    # durability, and every commit's fsync would otherwise cost most of the time.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path) as root:
        ServiceMachine.root = Path(root) / "examples"
        yield ServiceMachine.root


def test_service_keeps_its_contract_through_random_chains(machine_root):
    run = settings(max_examples=150 if LONG else 25, stateful_step_count=50 if LONG else 40, deadline=None,
                   derandomize=not LONG, suppress_health_check=list(HealthCheck))
    ServiceMachine.TestCase.settings = run
    ServiceMachine.TestCase().runTest()


@pytest.mark.parametrize("prefix", ["/v1", "/openai", "/openai/v1"])
def test_a_whole_chain_on_each_prefix(machine_root, prefix):
    """The chain the random runs may or may not reach, walked once on each prefix with the same checks: upload,
    job, validation, start, pause, resume, cancel, the file's delete refused and then allowed, both gone."""
    machine = ServiceMachine()
    try:
        file_id = machine.send_file("train", "train.jsonl", prefix, azure=prefix != "/v1")
        job_id = machine.create_job_from(file_id, prefix)
        machine.delete_file(file_id, prefix, azure=False)  # refused: the job still reads it
        for move in ("tick", "pause", "tick", "resume", "tick", "cancel", "tick"):
            if move == "tick":
                machine.worker_ticks("work")
            else:
                machine.act(job_id, move, prefix, azure=True)
            machine.check_job(job_id, prefix)
        assert machine.job[job_id]["status"] == "cancelled"
        machine.delete_file(file_id, prefix, azure=False)
        machine.delete_job(job_id, prefix)
        machine.retrieve_file(file_id, prefix)
        machine.check_job(job_id, prefix)
        assert file_id in machine.deleted_files and job_id in machine.deleted_jobs
    finally:
        machine.teardown()


def test_deleting_a_file_in_use_is_a_client_error_the_sdk_does_not_resend(machine_root):
    """A file an unfinished job reads cannot be deleted. The answer is 400, not the 409 some services give:
    openai-python resends a 409 on its own, and this refusal holds until the job ends."""
    machine = ServiceMachine()
    try:
        file_id = machine.send_file("train", "train.jsonl", "/v1", azure=False)
        machine.create_job_from(file_id, "/v1")
        response = machine.call("DELETE", f"/files/{file_id}", "/v1")
        assert response.status_code == 400 and response.json()["error"]["param"] == "file_id", response.text
        assert machine.call("GET", f"/files/{file_id}", "/v1").status_code == 200
    finally:
        machine.teardown()


def test_a_lone_surrogate_in_a_chat_is_refused(machine_root):
    """JSON may carry an unpaired surrogate (`"\\ud800"`); the chat route answers 400 naming `messages`, where
    the tokenizer's TypeError used to come back as a 500."""
    machine = ServiceMachine()
    try:
        body = '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi \\ud800"}]}'
        for prefix in ("/v1", "/openai/v1"):
            response = machine.call("POST", "/chat/completions", prefix, content=body,
                                    headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and response.json()["error"]["param"] == "messages", response.text
    finally:
        machine.teardown()
