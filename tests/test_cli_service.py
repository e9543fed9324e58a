"""`tunelab serve` and the client commands (files, jobs, models) as a user types them, against the real service."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import free_port, varied_chats, wait_for_event, write_jsonl
from test_cli import tunelab

TUNELAB = str(Path(sys.executable).with_name("tunelab"))


@pytest.fixture
def cli_env(service, monkeypatch):
    monkeypatch.setenv("TUNELAB_BASE_URL", service.base_url.removesuffix("/v1"))
    return service


def test_a_fine_tune_from_the_command_line(capsys, cli_env, tmp_path, home):
    train = write_jsonl(tmp_path / "train.jsonl", varied_chats(16))
    code, output = tunelab(capsys, "jobs", "create", "--model", "tiny", "--train", str(train), "--suffix", "cli",
                           "--epochs", "2", "--batch-size", "8", "--seed", "5", "--wait")
    assert code == 0, output
    assert "Uploaded train.jsonl as file-" in output and "Files validated" in output
    model = re.search(r"Succeeded: (ft:tiny:local:cli:\w+)", output).group(1)
    job_id = re.search(r"Created (ftjob-\w+)", output).group(1)

    code, output = tunelab(capsys, "jobs", "show", job_id)
    assert code == 0 and "succeeded" in output and "epochs 2, batch size 8" in output and model in output
    code, output = tunelab(capsys, "jobs", "events", job_id, "--json")
    events = json.loads(output)
    assert code == 0 and events[0]["message"] == "The job has successfully completed"
    code, output = tunelab(capsys, "jobs", "checkpoints", job_id)
    assert code == 0 and f"{model}:ckpt-step-4" in output and f"{model}:ckpt-step-2" in output
    code, output = tunelab(capsys, "jobs", "list", "--json")
    assert [j["id"] for j in json.loads(output)] == [job_id]
    code, output = tunelab(capsys, "models", "list", "--json")
    assert {m["id"]: m["kind"] for m in json.loads(output)}[model] == "fine-tuned"
    code, output = tunelab(capsys, "files", "list")
    assert code == 0 and "train.jsonl" in output and "results.csv" in output
    file_id = re.search(r"(file-\w+)\s.*train\.jsonl", output).group(1)

    assert tunelab(capsys, "models", "delete", model)[0] == 0
    code, output = tunelab(capsys, "models", "delete", "tiny")
    assert code == 2 and "base model" in output and "Traceback" not in output
    assert tunelab(capsys, "files", "delete", file_id)[0] == 0
    code, output = tunelab(capsys, "files", "list", "--json")
    assert [f["filename"] for f in json.loads(output)] == ["results.csv"]


def test_pause_resume_and_cancel_from_the_command_line(capsys, cli_env, tmp_path):
    code, output = tunelab(capsys, "files", "upload", str(write_jsonl(tmp_path / "t.jsonl", varied_chats(40))),
                           "--json")
    file_id = json.loads(output)["id"]
    code, output = tunelab(capsys, "jobs", "create", "--model", "tiny", "--train", file_id, "--epochs", "50",
                           "--batch-size", "1", "--json")
    job_id = json.loads(output)["id"]
    wait_for_event(cli_env.client(), job_id, "Step 2/")
    assert tunelab(capsys, "jobs", "pause", job_id) == (0, f"{job_id}: paused\n")
    code, output = tunelab(capsys, "jobs", "wait", job_id)
    assert code == 1 and "paused" in output
    assert tunelab(capsys, "jobs", "resume", job_id) == (0, f"{job_id}: queued\n")
    assert tunelab(capsys, "jobs", "cancel", job_id) == (0, f"{job_id}: cancelled\n")
    code, output = tunelab(capsys, "jobs", "cancel", job_id)
    assert code == 2 and "cannot cancel" in output and "Traceback" not in output


def test_client_errors_are_one_readable_line(capsys, cli_env, monkeypatch):
    code, output = tunelab(capsys, "jobs", "show", "ftjob-nope")
    assert code == 2 and "no fine-tuning job with id 'ftjob-nope'" in output
    code, output = tunelab(capsys, "jobs", "list", "--api-key", "wrong")
    assert code == 2 and "not valid" in output and "TUNELAB_API_KEY" in output
    monkeypatch.setenv("TUNELAB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    code, output = tunelab(capsys, "files", "list")
    assert code == 2 and "cannot reach the tunelab service" in output and "tunelab serve" in output
    code, output = tunelab(capsys, "models", "list")  # no service: the base models on disk, said so
    assert code == 0 and "tiny" in output and "showing the base models on this machine" in output


def test_serve_prints_a_new_key_once_stores_it_hashed_and_keeps_one_server_per_home(tmp_path, home, monkeypatch):
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    refused = subprocess.run([TUNELAB, "serve", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0 without an API key" in refused.stderr

    port = free_port()
    first = subprocess.Popen([TUNELAB, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        banner = ""
        while "export TUNELAB_API_KEY" not in banner:
            line = first.stdout.readline()
            assert line, banner
            banner += line
        key = re.search(r"TUNELAB_API_KEY=(\S+)", banner).group(1)
        assert f"http://127.0.0.1:{port}/v1" in banner
        while "Studio" not in banner:
            banner += first.stdout.readline()
        link = re.search(rf"(http://127\.0\.0\.1:{port}/\?token=(tls-\S+))", banner)
        assert link, banner
        studio_token = link.group(2)
        stored = (home / "api_keys").read_text()
        assert key not in stored and "sha256:" in stored
        assert (home / "api_keys").stat().st_mode & 0o077 == 0
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
        signed_in = httpx.get(link.group(1), follow_redirects=False)  # the printed link signs the browser in
        assert signed_in.status_code == 303 and f"tunelab_session_{port}=" in signed_in.headers["set-cookie"]
        assert studio_token not in signed_in.headers["set-cookie"]  # the cookie holds a session, not the key
        assert studio_token not in stored  # kept in memory only, for as long as this server runs
        second = subprocess.run([TUNELAB, "serve", "--port", str(free_port())], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and "another `tunelab serve` is already using" in second.stderr
    finally:
        first.terminate()
        first.wait(60)
    again = subprocess.Popen([TUNELAB, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        line = ""
        while "API key" not in line:
            line = again.stdout.readline()
            assert line
        assert "from " in line and "tl-" not in line  # no new key: the stored one still works
        while "Studio" not in line:
            line = again.stdout.readline()
            assert line
        assert studio_token not in line  # a new server, a new sign-in link
        deadline = time.monotonic() + 30
        while True:
            try:
                old_link = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {studio_token}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert old_link.status_code == 401
    finally:
        again.terminate()
        again.wait(60)


def test_deploy_and_chat_from_the_command_line(capsys, cli_env, monkeypatch):
    import io

    code, output = tunelab(capsys, "deploy", "tiny", "--name", "base-travel", "--tpm", "5")
    assert code == 0 and "base-travel: Succeeded (tiny, 5K tokens per minute, content filter Default)" in output
    code, output = tunelab(capsys, "deployments", "list")
    row = next(line for line in output.splitlines() if "base-travel" in line)
    assert code == 0 and "Succeeded" in row and "local" in row  # the engine column
    code, output = tunelab(capsys, "deployments", "show", "base-travel")
    assert json.loads(output)["properties"]["rateLimits"][1] == {"key": "token", "renewalPeriod": 60, "count": 5000}

    seen = []
    create = cli_env.app.state.service.pool.engines["tiny"].submit

    def spy(prompt, params, **kwargs):  # what the chat sends, observed on the engine
        seen.append(prompt)
        return create(prompt, params, **kwargs)

    cli_env.app.state.service.pool.engines["tiny"].submit = spy
    monkeypatch.setattr("sys.stdin", io.StringIO("Where to in May?\n/system Be brief.\nAnd June?\n/clear\n/exit\n"))
    code, output = tunelab(capsys, "chat", "base-travel", "--system", "You are a travel assistant.",
                           "--max-tokens", "5")
    assert code == 0 and output.count("base-travel> ") == 2 and "tokens in" in output
    assert "chat cleared" in output
    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(resolve_model("tiny").path)
    first, second = (tokenizer.decode(p) for p in seen)
    assert "You are a travel assistant." in first and "Where to in May?" in first
    assert "Be brief." in second and "Where to in May?" not in second  # the new system message cleared the chat

    code, output = tunelab(capsys, "deployments", "delete", "base-travel")
    assert code == 0 and tunelab(capsys, "deployments", "list", "--json")[1].strip() == "[]"
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    code, output = tunelab(capsys, "chat", "nope")
    assert code == 2 and "'nope' does not exist" in output and "Traceback" not in output
