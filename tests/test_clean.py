"""Clean-up: the service's storage report, the job delete rules, and `tunelab clean` deleting in dependency order
until nothing but the base models is left on disk."""

from __future__ import annotations

import os

import httpx2 as httpx
import openai
import pytest

from conftest import upload, varied_chats, wait_for
from test_cli import tunelab
from test_deployments import deploy, wait_until_provisioned


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), path) for root, _, names in os.walk(path) for f in names)


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

    storage = client.get("/storage", cast_to=object)
    assert [d["name"] for d in storage["deployments"]] == ["ft-travel", "ckpt"]
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
    order = [line.split()[1] for line in output.splitlines() if line.startswith("Deleted ")]
    assert order == ["deployment", "deployment", "model", "job", "file", "file"]
    assert "Freed" in output and "Base models kept: tiny" in output and "state database is compacted" in output
    storage = client.get("/storage", cast_to=object)
    assert not any(storage[k] for k in ("deployments", "models", "jobs", "files", "evaluations"))
    database = (home / "state" / "tunelab.db").read_bytes()
    assert model.encode() not in database and job_id.encode() not in database  # no deleted row lingers in it
    assert not (home / "state" / "tunelab.db-wal").exists() or not (home / "state" / "tunelab.db-wal").stat().st_size
    state = home / "state"
    left = [f for f in files_under(state) if not f.startswith("tunelab.db") and f != "serve.lock"]
    assert left == [], left
    assert sorted(os.listdir(home / "models")) == ["tiny"]


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
