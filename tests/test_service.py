"""The fine-tuning service through the official `openai` SDK against the real app and worker, with a tiny model."""

from __future__ import annotations

import csv
import io
import time

import httpx2 as httpx
import openai
import pytest

from conftest import upload, varied_chats, wait_for, wait_for_event, write_jsonl
from tunelab.train.metrics import COLUMNS

def test_a_job_runs_from_upload_to_a_fine_tuned_model(service, tmp_path, home):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(24))
    valid = upload(client, tmp_path, varied_chats(30)[24:], "valid.jsonl")
    assert train.status == "processed" and train.filename == "train.jsonl" and train.bytes > 0
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id, validation_file=valid.id,
                                         suffix="ft-travel", seed=7, metadata={"team": "travel"},
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": 2, "batch_size": 4}}})
    assert job.status == "validating_files" and job.seed == 7 and job.hyperparameters.learning_rate_multiplier == "auto"
    job = wait_for(client, job.id)

    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:local:ft-travel:{job.id[-8:]}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 1.0 and job.trained_tokens > 0
    assert job.finished_at >= job.created_at and job.estimated_finish is None and job.error is None

    # A job with a validation file gets a comparison with its base, announced just after it succeeds: wait for it
    # so the event list is complete whatever the timing.
    wait_for_event(client, job.id, "Comparing")
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in reversed(events)]  # oldest first
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[-4] == f"New fine-tuned model created: {job.fine_tuned_model}"
    assert messages[-3].startswith(f"Recommended checkpoint: {job.fine_tuned_model}:ckpt-step-")
    assert messages[-2] == "The job has successfully completed"
    assert messages[-1].startswith(f"Comparing {job.fine_tuned_model} with tiny on the validation file")
    assert "Files validated, moving job to queued state" in messages
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 13))  # 24 examples / 4 per step × 2 epochs
    assert all(e.data["total_steps"] == 12 and e.data["train_loss"] > 0 for e in metrics)
    assert metrics[-1].message.startswith("Step 12/12: training loss=")
    assert "full validation loss=" in metrics[-1].message

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [12, 6]  # one per epoch, newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-12"
    assert checkpoints[0].metrics.full_valid_loss is not None

    result = client.files.retrieve(job.result_files[0])
    assert result.purpose == "fine-tune-results" and result.filename == "results.csv"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result.id).text)))
    assert list(rows[0]) == COLUMNS and [int(r["step"]) for r in rows] == list(range(1, 13))

    models = {m.id: m for m in client.models.list()}
    assert models[job.fine_tuned_model].owned_by == "local" and models["tiny"].owned_by == "tunelab"
    assert client.models.retrieve(checkpoints[1].fine_tuned_model_checkpoint).id.endswith(":ckpt-step-6")
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "travel"})] == [job.id]
    assert list(client.fine_tuning.jobs.list(metadata={"team": "other"})) == []

    adapter = home / "state" / "jobs" / job.id / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    # Continued fine-tuning: a fine-tuned model is a valid base; the new job starts from its weights.
    more = client.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=train.id, suffix="more", seed=7,
                                          hyperparameters={"n_epochs": 1, "batch_size": 4})
    more = wait_for(client, more.id)
    assert more.status == "succeeded" and more.fine_tuned_model.startswith("ft:tiny:local:more:")
    continued = client.models.retrieve(more.fine_tuned_model)
    assert continued.parent == job.fine_tuned_model and continued.root == "tiny"
    first_loss = [e.data["train_loss"] for e in client.fine_tuning.jobs.list_events(more.id, limit=100)
                  if e.type == "metrics"][-1]
    assert first_loss < metrics[0].data["train_loss"]  # same seed, same first batch: it starts where the first ended
    slow = client.fine_tuning.jobs.create(model=more.fine_tuned_model, training_file=train.id,
                                          hyperparameters={"n_epochs": 50, "batch_size": 1})
    with pytest.raises(openai.BadRequestError) as caught:
        client.models.delete(more.fine_tuned_model)
    assert slow.id in caught.value.message  # a job still continues from it
    client.fine_tuning.jobs.cancel(slow.id)
    assert client.models.delete(more.fine_tuned_model).deleted
    assert client.models.delete(job.fine_tuned_model).deleted
    assert not adapter.exists()
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(job.fine_tuned_model)
    assert caught.value.body["code"] == "model_not_found"


def test_events_and_checkpoints_page_with_after_and_limit(service, tmp_path):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(20))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                         hyperparameters={"n_epochs": 3, "batch_size": 10})
    job = wait_for(client, job.id)
    assert job.status == "succeeded"
    everything = client.fine_tuning.jobs.list_events(job.id, limit=1000)
    assert not everything.has_more
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert page.has_more and [e.id for e in page.data] == [e.id for e in everything.data[:3]]
    second = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in second.data] == [e.id for e in everything.data[3:6]]
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=4)] == [e.id for e in everything.data]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in checkpoints.data] == [6, 4] and checkpoints.has_more
    rest = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2, after=checkpoints.data[-1].id)
    assert [c.step_number for c in rest.data] == [2] and not rest.has_more
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.list_events(job.id, after="ftevent-nope")
    assert caught.value.body["param"] == "after"


def test_a_bad_file_fails_the_job_naming_its_line_and_trains_nothing(service, tmp_path, home):
    client = service.client()
    rows = varied_chats(12)
    rows[4] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]}
    train = upload(client, tmp_path, rows)
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=train.id).id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert job.error.code == "invalid_training_file" and "line 5" in job.error.message and "robot" in job.error.message
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert events[0].level == "error" and not any(e.type == "metrics" for e in events)
    assert not (home / "state" / "jobs" / job.id).exists()  # no training process ever ran

    rows = varied_chats(12)
    rows[7] = '{"messages": ' + "9" * 5000 + "}"  # an integer Python refuses to convert
    huge = upload(client, tmp_path, rows, "huge.jsonl")
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=huge.id).id)
    assert job.status == "failed" and "line 8" in job.error.message and "invalid_json" in job.error.message

    few = upload(client, tmp_path, varied_chats(3), "few.jsonl")
    job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=few.id).id)
    assert job.error.code == "invalid_n_examples" and "3 valid example(s)" in job.error.message


def test_cancel_pause_and_resume(service, tmp_path):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(40))
    slow = {"n_epochs": 50, "batch_size": 1}  # 2,000 steps: still running when we act
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id, hyperparameters=slow, suffix="p")
    wait_for_event(client, job.id, "Step 3/")
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish >= running.created_at
    assert running.hyperparameters.n_epochs == 50 and running.hyperparameters.learning_rate_multiplier == 1.0
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.step_number > 3
    assert client.models.retrieve(checkpoint.fine_tuned_model_checkpoint).id == checkpoint.fine_tuned_model_checkpoint
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.pause(job.id)
    assert "paused" in caught.value.message and client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    wait_for_event(client, job.id, f"resumed at step {checkpoint.step_number}/")
    wait_for_event(client, job.id, f"Step {checkpoint.step_number + 2}/")
    started = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and time.monotonic() - started < 5
    assert cancelled.fine_tuned_model is None and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_bad_requests_get_openai_errors_naming_the_field(service, tmp_path):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(12))
    cases = [
        (dict(model="no-such-model", training_file=train.id), openai.NotFoundError, "model"),
        (dict(model="tiny", training_file="file-missing"), openai.BadRequestError, "training_file"),
        (dict(model="tiny", training_file=train.id, validation_file=train.id), openai.BadRequestError,
         "validation_file"),
        (dict(model="tiny", training_file=train.id, hyperparameters={"n_epochs": 51}), openai.BadRequestError,
         "hyperparameters.n_epochs"),
        (dict(model="tiny", training_file=train.id, suffix="x" * 65), openai.BadRequestError, "suffix"),
        (dict(model="tiny", training_file=train.id, seed=-1), openai.BadRequestError, "seed"),
        (dict(model="tiny", training_file=train.id, method={"type": "reinforcement"}), openai.BadRequestError,
         "method.type"),
        (dict(model="tiny", training_file=train.id, method={"type": "dpo"}), openai.BadRequestError,
         "training_file"),  # a chat file for a preference method
        (dict(model="tiny", training_file=train.id, extra_body={"epochs": 3}), openai.BadRequestError, "epochs"),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as caught:
            client.fine_tuning.jobs.create(**kwargs)
        body = caught.value.body
        assert body["param"] == param and body["message"] and body["type"] == "invalid_request_error", (kwargs, body)
    assert list(client.fine_tuning.jobs.list()) == []

    for purpose, name, param in (("assistants", "train.jsonl", "purpose"), ("fine-tune", "train.csv", "file")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=(name, b'{"messages": []}\n'), purpose=purpose)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.models.delete("tiny")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    response = httpx.post(f"{service.base_url}/files", headers={"Authorization": "Bearer test-key"},
                          files={"file": ("a.jsonl", b"{}\n")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    response = httpx.post(f"{service.base_url}/fine_tuning/jobs", headers={"Authorization": "Bearer test-key",
                          "Content-Type": "application/json"}, content=b"[" * 200_000)
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = httpx.post(f"{service.base_url}/fine_tuning/jobs", headers={"Authorization": "Bearer test-key"},
                          content=b"{" + b" " * (2 << 20) + b"}")
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    chunked = (b" " * 65536 for _ in range(40))  # no Content-Length
    response = httpx.post(f"{service.base_url}/fine_tuning/jobs", headers={"Authorization": "Bearer test-key"},
                          content=chunked)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    response = httpx.get(f"{service.base_url}/fine_tuning/jobs", params={'metadata[a"].x]': "b"},
                         headers={"Authorization": "Bearer test-key"})
    assert response.status_code == 200 and response.json()["data"] == []
    cut = b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n' \
          b'Content-Disposition: form-data; name="file"; filename="cut.jsonl"\r\n\r\n{"messages": ['
    response = httpx.post(f"{service.base_url}/files", content=cut, headers={
        "Authorization": "Bearer test-key", "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and "closing boundary" in response.json()["error"]["message"]
    assert [f.id for f in client.files.list()] == [train.id]


def test_a_file_in_use_cannot_be_deleted_and_a_deleted_file_is_gone(service, tmp_path, home):
    client = service.client()
    train = upload(client, tmp_path, varied_chats(40))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.delete(train.id)
    assert job.id in caught.value.message
    client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(train.id).deleted
    assert not (home / "state" / "files" / train.id).exists()
    with pytest.raises(openai.NotFoundError):
        client.files.content(train.id)


def test_idempotency_keys_replay_the_first_create(service, tmp_path):
    client = service.client()
    path = write_jsonl(tmp_path / "train.jsonl", varied_chats(12))
    first = client.files.create(file=path.open("rb"), purpose="fine-tune", extra_headers={"Idempotency-Key": "u1"})
    again = client.files.create(file=path.open("rb"), purpose="fine-tune", extra_headers={"Idempotency-Key": "u1"})
    assert again.id == first.id and len(client.files.list().data) == 1
    create = dict(model="tiny", training_file=first.id, hyperparameters={"n_epochs": 1})
    job = client.fine_tuning.jobs.create(**create, extra_headers={"Idempotency-Key": "j1"})
    assert client.fine_tuning.jobs.create(**create, extra_headers={"Idempotency-Key": "j1"}).id == job.id
    with pytest.raises(openai.UnprocessableEntityError):
        client.fine_tuning.jobs.create(**{**create, "suffix": "other"}, extra_headers={"Idempotency-Key": "j1"})
    assert len(client.fine_tuning.jobs.list().data) == 1


def every_route(routes):
    """The app's routes, with those of included routers (FastAPI keeps them nested)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from every_route(route.effective_candidates())
        else:
            yield route


def test_every_route_but_health_needs_a_valid_key(service):
    from tunelab.app import create_app

    from tunelab.web.routes import is_open

    root = service.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").status_code == 200
    opened, checked = set(), 0
    for route in every_route(create_app().routes):
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}:
            path = route.path.replace("{file_id}", "file-x").replace("{job_id}", "ftjob-x") \
                .replace("{model_id:path}", "m")
            if path == "/health" or is_open(method, path):
                opened.add(path)
                continue
            checked += 1
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}):
                response = httpx.request(method, root + path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
    assert checked >= 3 * 34  # every API route, under /v1, /openai and /openai/v1 (and /openapi.json)
    # and the studio's static files under /studio/ (a page shell, no data); signing in checks the key it is given
    assert opened == {"/health", "/", "/studio/session"}
    assert httpx.get(f"{root}/v1/files?api_key=test-key").status_code == 401
    assert httpx.get(f"{root}/v1/models", headers={"api-key": "test-key"}).status_code == 200
    spec = httpx.get(f"{root}/openapi.json", headers={"Authorization": "Bearer test-key"}).json()
    assert {"/v1/files", "/v1/fine_tuning/jobs/{job_id}/pause", "/v1/models/{model_id}"} <= set(spec["paths"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=service.base_url, api_key="wrong").models.list()


def test_azure_client_reaches_the_same_routes(service):
    client = openai.AzureOpenAI(azure_endpoint=service.base_url.removesuffix("/v1"), api_key="test-key",
                                api_version="2024-10-21")
    assert "tiny" in {m.id for m in client.models.list()}


def test_the_upload_cap_stops_reading_and_keeps_nothing(monkeypatch, tiny_model, tmp_path, home):
    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_MAX_FILE_BYTES", "1000")
    from conftest import serve_in_thread

    with serve_in_thread() as running:
        client = running.client(max_retries=0)
        for size, ok in ((999, True), (1000, True), (1001, False)):
            body = b"x" * size
            if ok:
                assert client.files.create(file=("f.jsonl", body), purpose="fine-tune").bytes == size
            else:
                with pytest.raises(openai.APIStatusError) as caught:
                    client.files.create(file=("f.jsonl", body), purpose="fine-tune")
                assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"

        def chunks():  # no Content-Length: the cap is found while streaming
            yield b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
            for _ in range(100):
                yield b"y" * 100
            yield b"\r\n--b--\r\n"

        response = httpx.post(f"{running.base_url}/files", content=chunks(), headers={
            "Authorization": "Bearer test-key", "Content-Type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
        assert len(client.files.list().data) == 2
    stored = sorted(p.name for p in (home / "state" / "files").iterdir())
    assert len(stored) == 2 and not any(name.startswith(".tmp") for name in stored)

    # Bytes whose row never committed (a crash between the two) are removed at the next start.
    (home / "state" / "files" / "file-0123456789abcdef01234567").write_bytes(b"orphan")
    (home / "state" / "files" / ".tmp-file-89abcdef0123456789abcdef").write_bytes(b"half")
    with serve_in_thread():
        pass
    assert sorted(p.name for p in (home / "state" / "files").iterdir()) == stored


def test_a_query_parameter_given_twice_is_refused(service):
    response = httpx.get(f"{service.base_url}/files?purpose=fine-tune&purpose=other",
                         headers={"Authorization": "Bearer test-key"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
