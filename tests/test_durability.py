"""Jobs survive the server: kill -9 mid-job, restart, and the job finishes with the same result as a run that was
never interrupted; a graceful stop (SIGTERM) puts the running job back in the queue without using up an attempt."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from safetensors.torch import load_file

from conftest import free_port, trainers, varied_chats, wait_for, wait_for_event, write_jsonl

TUNELAB = str(Path(sys.executable).with_name("tunelab"))


def steps_in(client, job_id: str, pattern: str) -> list[int]:
    """The step numbers that event messages matching `pattern` name, oldest first."""
    events = reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)
    return [int(m.group(1)) for e in events if (m := re.search(pattern, e.message))]


class Server:
    """`tunelab serve` as a separate process, so it can be killed for real."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([TUNELAB, "serve", "--port", str(self.port)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("tunelab serve did not start")

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(90)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="inspects processes through /proc")
def test_kill_9_and_sigterm_mid_job_then_the_job_finishes_with_the_same_result(monkeypatch, tiny_model, tmp_path, home):
    from tunelab.models.catalog import import_model

    monkeypatch.setenv("TUNELAB_API_KEY", "test-key")
    monkeypatch.setenv("TUNELAB_LEASE_SECONDS", "3")
    import_model(tiny_model, "tiny")
    server = Server(free_port(), tmp_path / "serve.log").start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="test-key")
    train = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", varied_chats(20)).open("rb"),
                                purpose="fine-tune")
    create = dict(model="tiny", training_file=train.id, seed=11, hyperparameters={"n_epochs": 8, "batch_size": 1})
    job = client.fine_tuning.jobs.create(**create)

    wait_for_event(client, job.id, "Checkpoint created at step 20 ")
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while trainers(job.id) and time.monotonic() < deadline:  # the orphaned trainer leaves by itself
        time.sleep(0.1)
    assert not trainers(job.id)

    server.start()
    wait_for_event(client, job.id, "the server stopped while the job was training")
    wait_for_event(client, job.id, "resumed at step")
    resumed_at = steps_in(client, job.id, r"resumed at step (\d+)/")[0]
    assert 20 <= resumed_at < 160  # killed mid-job, resumed from a checkpoint
    wait_for_event(client, job.id, f"Checkpoint created at step {resumed_at + 20} ")
    server.stop(signal.SIGTERM)  # graceful: checkpoint at the next step, back to the queue
    assert not trainers(job.id)
    server.start()
    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    resumed = [m for m in messages if "resumed at step" in m]
    assert len(resumed) == 2 and "because the server is shutting down" in " ".join(messages)
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    assert max(steps) == 160 and sorted(steps) == list(range(1, 161))  # each step once

    reference = wait_for(client, client.fine_tuning.jobs.create(**create).id)  # never interrupted
    assert reference.status == "succeeded" and reference.trained_tokens == job.trained_tokens
    runs = home / "state" / "jobs"
    mine, theirs = (load_file(runs / j.id / "adapter" / "adapter_model.safetensors") for j in (job, reference))
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    results = [client.files.content(j.result_files[0]).text for j in (job, reference)]
    assert results[0] == results[1] and results[0].count("\n") == 161
    server.stop(signal.SIGTERM)
