"""Exports through the API (`/v1/exports`) and `tunelab export`, on a real fine-tune of the tiny model: each format
exported, followed to the end, downloaded and loaded back; every bad request refused naming its field; a
quantisation the model's shapes cannot take, or a disk that fills up, failing the export with nothing left; file
names that climb out of the export refused; a server stop failing the running export and those waiting; an export
the server was killed in the middle of failed at the next start.

The tests share one server and one fine-tune (with its checkpoints), made once for the module.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from conftest import serve_in_thread, upload, varied_chats, wait_for
from test_cli import tunelab

KEY = "test-key"
SYSTEM = "You are a travel assistant."


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("exports") / "home"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"TUNELAB_HOME": str(home), "TUNELAB_API_KEY": KEY, "TUNELAB_LEASE_SECONDS": "3",
                            "TUNELAB_AUTO_COMPARE": "false"}.items():
            env.setenv(name, value)
        from tunelab.models.catalog import import_model

        import_model(tiny_model, "tiny")
        with serve_in_thread() as running:
            running.home = home
            client = running.client()
            train = upload(client, tmp_path_factory.mktemp("data"), varied_chats(16))
            job = wait_for(client, client.fine_tuning.jobs.create(
                model="tiny", training_file=train.id, suffix="chat", seed=3,
                hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}).id)
            assert job.status == "succeeded", job.error
            running.model = job.fine_tuned_model
            running.checkpoints = [c.fine_tuned_model_checkpoint
                                   for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
            yield running


@pytest.fixture(autouse=True)
def home(server):
    """The module's one home (conftest's per-test home would hide the server's models from the CLI)."""
    return server.home


def api(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def finished(http: httpx.Client, export_id: str, timeout: float = 120) -> dict:
    """Poll the export until it has succeeded or failed; every progress seen stays within 0..1 and never falls."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        found = http.get(f"/exports/{export_id}").json()
        seen.append(found["progress"])
        if found["status"] in ("succeeded", "failed"):
            assert all(0 <= p <= 1 for p in seen) and seen == sorted(seen), seen
            return found
        time.sleep(0.1)
    raise AssertionError(f"export {export_id} still {found['status']} after {timeout} s")


def export(server, **body) -> dict:
    with api(server) as http:
        started = http.post("/exports", json=body)
        assert started.status_code == 200, started.text
        assert started.json()["object"] == "export" and started.json()["status"] in ("queued", "running")
        return finished(http, started.json()["id"])


def download(server, found: dict, into: Path) -> Path:
    """Every file of the export, through the API, into `into`; each answer's length is the listed size."""
    with api(server) as http:
        for f in found["files"]:
            response = http.get(f"/exports/{found['id']}/files/{f['name']}")
            assert response.status_code == 200, response.text
            assert int(response.headers["content-length"]) == f["bytes"] == len(response.content)
            (into / f["name"]).parent.mkdir(parents=True, exist_ok=True)
            (into / f["name"]).write_bytes(response.content)
    return into


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_peft_export_downloads_and_loads_with_peft(server, tiny_model, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    found = export(server, model=server.model, format="peft")
    assert found["status"] == "succeeded" and found["progress"] == 1 and found["error"] is None, found
    assert found["bytes"] == sum(f["bytes"] for f in found["files"]) > 0
    names = {f["name"] for f in found["files"]}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
    adapter = download(server, found, tmp_path / "adapter")

    trained = server.app.state.service.registry.locate(server.model).weights  # what training wrote
    exported = load_file(adapter / "adapter_model.safetensors")
    original = load_file(trained / "adapter_model.safetensors")
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in exported)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    before = logits(base, ids)
    tuned = PeftModel.from_pretrained(base, adapter)
    assert not torch.allclose(logits(tuned, ids), before)  # the adapter loaded, and it changes the answer

    with api(server) as http:  # the list: newest first, pages with after
        listed = http.get("/exports", params={"limit": 1}).json()
        assert listed["object"] == "list" and listed["data"][0]["id"] == found["id"]
        assert http.get("/exports", params={"model": server.model}).json()["data"][0]["id"] == found["id"]
        root = server.base_url.removesuffix("/v1")
        for prefix in ("/openai", "/openai/v1"):  # Azure's mirrors of the routes
            mirrored = http.get(f"{root}{prefix}/exports/{found['id']}")
            assert mirrored.json() == http.get(f"/exports/{found['id']}").json()


def test_merged_export_loads_with_transformers_and_answers_as_base_plus_adapter(server, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    found = export(server, model=server.model, format="merged")
    assert found["status"] == "succeeded", found
    merged = AutoModelForCausalLM.from_pretrained(download(server, found, tmp_path / "merged"))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                      server.app.state.service.registry.locate(server.model).weights)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    assert torch.allclose(logits(merged, ids), logits(tuned, ids), atol=1e-4)


def test_gguf_export_of_a_checkpoint_with_an_ollama_modelfile(server, tmp_path):
    import gguf

    checkpoint = server.checkpoints[-1]  # the first epoch's
    found = export(server, model=checkpoint, format="gguf", quantization="f16", ollama=True, system=SYSTEM)
    assert found["status"] == "succeeded", found
    assert (found["model"], found["quantization"], found["ollama"], found["system"]) == \
        (checkpoint, "f16", True, SYSTEM)
    files = download(server, found, tmp_path / "gguf")
    [path] = [files / f["name"] for f in found["files"] if f["name"].endswith(".gguf")]
    reader = gguf.GGUFReader(path)
    assert "tokenizer.chat_template" in reader.fields
    modelfile = (files / "Modelfile").read_text()
    assert "FROM " in modelfile and SYSTEM in modelfile and "PARAMETER stop" in modelfile


def test_bad_requests_are_refused_naming_the_field(server):
    with api(server) as http:
        def refused(body, status, param, code=None):
            answer = http.post("/exports", json=body)
            assert answer.status_code == status, answer.text
            error = answer.json()["error"]
            assert error["param"] == param and error["message"], error
            if code:
                assert error["code"] == code, error
            return error

        before = len(http.get("/exports", params={"limit": 100}).json()["data"])
        refused({"model": "ft:tiny:local:nope:000", "format": "peft"}, 404, "model", "model_not_found")
        assert "base model" in refused({"model": "tiny", "format": "merged"}, 400, "model")["message"]
        refused({"model": "tiny", "format": "peft"}, 400, "model")
        refused({"model": server.model, "format": "onnx"}, 400, "format")
        refused({"model": server.model, "format": "gguf", "quantization": "q3_k"}, 400, "quantization")
        refused({"model": server.model, "format": "peft", "quantization": "q8_0"}, 400, "quantization")
        refused({"model": server.model, "format": "merged", "ollama": True}, 400, "ollama")
        refused({"model": server.model, "format": "gguf", "system": SYSTEM}, 400, "system")
        refused({"model": server.model}, 400, "format")
        assert len(http.get("/exports", params={"limit": 100}).json()["data"]) == before  # nothing recorded
        assert http.get("/exports/export-0123").status_code == 404
        assert http.get("/exports", params={"after": "export-0123"}).status_code == 400


def test_a_quantisation_the_model_cannot_take_fails_the_export_and_leaves_nothing(server):
    found = export(server, model=server.model, format="gguf", quantization="q4_0")  # rows of 48: not blocks of 32
    assert found["status"] == "failed" and found["files"] == [] and found["finished_at"], found
    assert "q4_0" in found["error"]["message"] and "f16" in found["error"]["message"], found["error"]
    exports = server.home / "exports"
    assert sorted(p.name for p in exports.iterdir() if found["id"] in p.name or p.name.startswith(".")) == []


def test_a_disk_that_fills_up_fails_the_export_with_nothing_left(server, tmp_path):
    from test_db_faults import tmpfs

    settings = {"home": str(tmp_path / "full")}
    with tmpfs(tmp_path / "full" / "exports", "64k") as disk, serve_in_thread(**settings) as small, \
            api(small) as http:
        started = http.post("/exports", json={"model": "tiny", "format": "gguf"})  # ~150 KB: more than the disk
        assert started.status_code == 200, started.text
        found = finished(http, started.json()["id"])
        assert found["status"] == "failed" and found["error"]["code"] == "disk_full", found
        assert "disk is full" in found["error"]["message"] and found["files"] == []
        assert list(disk.iterdir()) == []  # the half-written export went
        assert http.get("/models").status_code == 200  # and the service carries on


def test_a_server_stop_fails_the_running_export_at_its_next_report_and_those_waiting(server, tmp_path):
    from tunelab.api.exports.runner import ExportRunner
    from tunelab.export import ExportRequest
    from tunelab.store.db import Database
    from tunelab.store.exports import Exports

    stops = []

    class StopWhileItRuns(Exports):
        """The store, with the server's shutdown (what app.py's lifespan calls) arriving during the first report."""

        def progress(self, export_id, fraction, stage):
            super().progress(export_id, fraction, stage)
            if not stops:
                stops.append(threading.Thread(target=runner.stop))
                stops[0].start()
                time.sleep(0.2)  # the export goes on only once the stop has been asked for

    db = Database(tmp_path / "state" / "tunelab.db")
    db.migrate()
    exports = StopWhileItRuns(db, tmp_path / "exports")
    runner = ExportRunner(exports, server.app.state.service.registry)
    running = exports.add(server.model, "merged", None, False, None)
    waiting = exports.add(server.model, "peft", None, False, None)
    runner.submit(running["id"], server.model, ExportRequest(format="merged"))
    runner.submit(waiting["id"], server.model, ExportRequest(format="peft"))
    deadline = time.monotonic() + 60
    while not stops and time.monotonic() < deadline:
        time.sleep(0.05)
    stops[0].join(60)
    for record in (running, waiting):
        found = exports.get(record["id"])
        assert found["status"] == "failed" and found["error_code"] == "server_stopped", found
    assert exports.get(running["id"])["progress"] == 0  # it stopped at its first report after the stop
    assert list((tmp_path / "exports").iterdir()) == []  # the half-written export went
    later = exports.add(server.model, "peft", None, False, None)
    runner.submit(later["id"], server.model, ExportRequest(format="peft"))  # a stopped runner takes no more
    assert exports.get(later["id"])["error_code"] == "server_stopped"


def test_only_the_files_an_export_lists_can_be_downloaded(server, tmp_path):
    found = export(server, model=server.model, format="peft")
    secret = server.home / "state" / "tunelab.db"
    assert secret.is_file()
    with api(server) as http:
        for name in ("../../state/tunelab.db", "..%2F..%2Fstate%2Ftunelab.db", "%2E%2E/%2E%2E/state/tunelab.db",
                     "/etc/passwd", "adapter", "no-such-file"):
            answer = http.get(f"/exports/{found['id']}/files/{name}")
            assert answer.status_code == 404, (name, answer.status_code)
            assert answer.json()["error"]["message"], name
        assert http.get(f"/exports/..%2F..%2Fstate/files/tunelab.db").status_code == 404

        deleted = http.delete(f"/exports/{found['id']}")
        assert deleted.json() == {"id": found["id"], "object": "export", "deleted": True}
        assert not (server.home / "exports" / found["id"]).exists()  # the files went with it
        assert http.get(f"/exports/{found['id']}").status_code == 404
        assert http.get(f"/exports/{found['id']}/files/adapter_config.json").status_code == 404


def test_the_cli_exports_a_fine_tune_without_the_service(server, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = tunelab(capsys, "export", server.model, "--format", "gguf", "--quant", "f16", "--ollama",
                           "--system", SYSTEM)
    assert code == 0, output
    made = tmp_path / "exports" / f"{server.model.replace(':', '-')}-gguf-f16"
    names = sorted(p.name for p in made.iterdir())
    assert any(n.endswith(".gguf") for n in names) and "Modelfile" in names, names
    assert "total" in output and "llama-server -m" in output and "ollama create" in output
    assert SYSTEM in (made / "Modelfile").read_text()

    code, output = tunelab(capsys, "export", server.model, "--format", "gguf")  # the same directory again
    assert code == 2 and "already exists" in output and "Traceback" not in output


def test_an_export_the_server_stopped_in_is_failed_at_the_next_start(tmp_path):
    settings = {"home": str(tmp_path / "restart")}
    with serve_in_thread(**settings) as first:  # the state a server killed mid-export leaves behind
        exported = first.app.state.service.exported
        running = exported.add("ft:tiny:local:chat:abc", "gguf", "q8_0", False, None)
        assert exported.start(running["id"])
        exported.progress(running["id"], 0.4, "writing tensors")
        queued = exported.add("ft:tiny:local:chat:abc", "peft", None, False, None)
        half = exported.directory(running["id"])
        half.mkdir(parents=True)
        (half / "model.gguf").write_bytes(b"GGUF" + b"\0" * 64)
        (half.parent / f".tmp-{running['id']}").mkdir()
    with serve_in_thread(**settings) as second, api(second) as http:
        for record in (running, queued):
            found = http.get(f"/exports/{record['id']}").json()
            assert found["status"] == "failed", found
            assert found["error"]["code"] == "server_stopped" and "server stopped" in found["error"]["message"]
            assert found["finished_at"] is not None
        assert list((tmp_path / "restart" / "exports").iterdir()) == []  # no half-written file left
        assert http.delete(f"/exports/{running['id']}").status_code == 200


def test_a_model_an_unfinished_export_reads_cannot_be_deleted(server):
    exported = server.app.state.service.exported
    running = exported.add(server.model, "merged", None, False, None)  # a real row, held running by the test
    assert exported.start(running["id"])
    try:
        with api(server) as http:
            refused = http.delete(f"/models/{server.model}")
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "model" and running["id"] in error["message"]
            assert http.get(f"/models/{server.model}").status_code == 200  # nothing was deleted
    finally:
        exported.failed(running["id"], "server_stopped", "ended by the test")
