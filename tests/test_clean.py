"""Clean-up: the service's storage report, the job and export delete rules, and `tunelab clean` deleting in
dependency order until nothing but the base models is left on disk."""

from __future__ import annotations

import os
import time

import httpx2 as httpx
import openai
import pytest

from conftest import upload, varied_chats, wait_for
from test_cli import tunelab
from test_deployments import deploy, wait_until_provisioned


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), path) for root, _, names in os.walk(path) for f in names)


def exported(client, **body) -> dict:
    """A real export through the API, followed until it has finished."""
    started = client.post("/exports", body=body, cast_to=object)
    deadline = time.monotonic() + 60
    while (found := client.get(f"/exports/{started['id']}", cast_to=object))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    assert found["status"] == "succeeded", found
    return found


def test_clean_all_deletes_in_dependency_order_and_leaves_only_the_base_models(capsys, tuned, home, tmp_path,
                                                                               monkeypatch):
    service, model = tuned
    client = service.client(max_retries=0)
    http = httpx.Client(headers={"Authorization": "Bearer test-key"})
    assert deploy(http, service.base_url, "ft-travel", model).status_code == 201
    assert wait_until_provisioned(http, service.base_url, "ft-travel") == "Succeeded"
    checkpoint = client.fine_tuning.jobs.checkpoints.list(client.fine_tuning.jobs.list().data[0].id).data[0]
    assert deploy(http, service.base_url, "ckpt", checkpoint.fine_tuned_model_checkpoint).status_code == 201
    wait_until_provisioned(http, service.base_url, "ckpt")
    job_id = client.fine_tuning.jobs.list().data[0].id
    exports = [exported(client, model=model, format="gguf", ollama=True), exported(client, model="tiny", format="gguf")]

    storage = client.get("/storage", cast_to=object)
    assert [d["name"] for d in storage["deployments"]] == ["ft-travel", "ckpt"]
    held = {e["id"]: e for e in storage["exports"]}
    assert list(held) == [e["id"] for e in exports]
    for found in exports:  # the disk each takes: its directory, whose files are the ones it lists
        assert held[found["id"]]["bytes"] == found["bytes"] > 0 and held[found["id"]]["files"] == len(found["files"])
        assert files_under(home / "exports" / found["id"]) == sorted(f["name"] for f in found["files"])
    assert held[exports[0]["id"]]["ollama"] and held[exports[1]["id"]]["model"] == "tiny"
    assert storage["removable_bytes"] == sum(x["bytes"] for k in ("exports", "models", "jobs", "files")
                                             for x in storage[k])
    assert storage["models"][0]["id"] == model and storage["models"][0]["bytes"] > 0
    assert storage["jobs"][0]["checkpoints"] >= 1 and storage["jobs"][0]["bytes"] > 0
    assert {f["purpose"] for f in storage["files"]} == {"fine-tune", "fine-tune-results"}
    assert [m["name"] for m in storage["base_models"]] == ["tiny"]

    # Out of order, the service refuses and says what must go first.
    with pytest.raises(openai.BadRequestError) as first_the_model:
        client.delete(f"/fine_tuning/jobs/{job_id}", cast_to=object)
    assert model in first_the_model.value.body["message"]
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    code, output = tunelab(capsys, "clean", "--models", "--yes")
    assert code == 1 and "Not deleted model" in output and "deployed as 'ft-travel'" in output
    code, output = tunelab(capsys, "clean", "--all")  # not a terminal: no silent confirmation
    assert code != 0 and "pass --yes" in output

    code, output = tunelab(capsys, "clean", "--all", "--yes")
    assert code == 0, output
    assert "gguf f16 + Modelfile of" in output and "gguf f16 of tiny" in output  # each export, shown as it goes
    order = [line.split()[1] for line in output.splitlines() if line.startswith("Deleted ")]
    assert order == ["deployment", "deployment", "export", "export", "model", "job", "file", "file"]
    assert "Freed" in output and "Base models kept: tiny" in output and "state database is compacted" in output
    storage = client.get("/storage", cast_to=object)
    assert not any(storage[k] for k in ("deployments", "exports", "models", "jobs", "files", "evaluations"))
    assert files_under(home / "exports") == []
    database = (home / "state" / "tunelab.db").read_bytes()
    assert model.encode() not in database and job_id.encode() not in database  # no deleted row lingers in it
    assert not (home / "state" / "tunelab.db-wal").exists() or not (home / "state" / "tunelab.db-wal").stat().st_size
    state = home / "state"
    left = [f for f in files_under(state) if not f.startswith("tunelab.db") and f != "serve.lock"]
    assert left == [], left
    assert sorted(os.listdir(home / "models")) == ["tiny"]
    assert all(f.startswith(("models/", "state/tunelab.db")) or f in ("state/serve.lock", "api_key")
               for f in files_under(home)), files_under(home)  # what the README says `--all` leaves


def test_clean_refuses_a_running_export_with_its_reason_and_deletes_it_once_finished(capsys, service, home,
                                                                                   monkeypatch):
    client = service.client(max_retries=0)
    finished = exported(client, model="tiny", format="gguf")
    # An export mid-run, as the store holds it while the runner writes (a tiny one finishes too fast to catch).
    store = service.app.state.service.exported
    running = store.add("tiny", "gguf", "f16", False, None)
    assert store.start(running["id"])
    held = {e["id"]: e for e in client.get("/storage", cast_to=object)["exports"]}
    assert held[running["id"]]["status"] == "running" and held[running["id"]]["bytes"] == 0
    assert held[finished["id"]]["bytes"] == finished["bytes"] > 0

    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    code, output = tunelab(capsys, "clean", "--exports", "--yes")
    assert code == 1 and f"Deleted export {finished['id']}" in output
    assert f"Not deleted export {running['id']}" in output and "delete it once it has finished" in output
    assert [e["id"] for e in client.get("/storage", cast_to=object)["exports"]] == [running["id"]]

    store.failed(running["id"], "server_stopped", "stopped")  # finished now: it goes like any other
    code, output = tunelab(capsys, "clean", "--exports", "--yes")
    assert code == 0 and f"Deleted export {running['id']}" in output, output
    assert client.get("/storage", cast_to=object)["exports"] == [] and files_under(home / "exports") == []


def test_a_running_job_cannot_be_deleted(service, tmp_path):
    client = service.client(max_retries=0)
    train = upload(client, tmp_path, varied_chats(16))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    with pytest.raises(openai.BadRequestError) as running:
        client.delete(f"/fine_tuning/jobs/{job.id}", cast_to=object)
    assert "cancel it" in running.value.body["message"]
    client.fine_tuning.jobs.cancel(job.id)
    assert wait_for(client, job.id).status == "cancelled"
    assert client.delete(f"/fine_tuning/jobs/{job.id}", cast_to=object)["deleted"]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve(job.id)
