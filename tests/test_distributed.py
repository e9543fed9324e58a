"""Training on N processes: a job with `nproc` 2 runs under torchrun (gloo, two CPU processes) through the real
service and worker, and computes what one process computes on the same global batches; a kill -9 of one rank
mid-epoch requeues the job, which resumes from its last complete checkpoint and ends as if never interrupted;
a bad `nproc` is a 400 naming it. The products multiply in fp32 here (TUNELAB_TRAIN_PRECISION), so the only
differences between 1 and 2 processes are the order of float sums; in bf16 they are bf16's rounding.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from pathlib import Path

import openai
import pytest
import torch
from safetensors.torch import load_file

from conftest import serve_in_thread, upload, varied_chats, wait_for, write_jsonl

# 19 conversations in batches of 3 for 2 epochs: 7 steps an epoch, the last batch one conversation (so rank 1's
# share of it is empty), a checkpoint every 2 steps besides each epoch's end.
CREATE = dict(model="tiny", seed=5, hyperparameters={"n_epochs": 2, "batch_size": 3})
ENV = {"TUNELAB_API_KEY": "test-key", "TUNELAB_LEASE_SECONDS": "3", "TUNELAB_TRAIN_PRECISION": "fp32",
       "TUNELAB_CHECKPOINT_EVERY_STEPS": "2", "TUNELAB_AUTO_COMPARE": "false"}
STEPS = 14


@pytest.fixture
def lab(monkeypatch, tiny_model):
    """The real service (API and worker) with the tiny model as `tiny`, training in fp32."""
    from tunelab.models.catalog import import_model

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    import_model(tiny_model, "tiny")
    with serve_in_thread() as running:
        yield running


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> dict:
    """The same job on one process, never interrupted: its per-step losses and adapter."""
    from tunelab.models.catalog import import_model

    saved = dict(os.environ)
    home = tmp_path_factory.mktemp("reference") / "home"
    os.environ.update({**ENV, "TUNELAB_HOME": str(home)})
    try:
        import_model(tiny_model, "tiny")
        with serve_in_thread() as running:
            job = run_job(running.client(), tmp_path_factory.mktemp("data"), nproc=1)
            return {"losses": losses(running.client(), job), "adapter": adapter(home, job.id)}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_job(client, folder: Path, *, nproc: int, during=None):
    folder.mkdir(parents=True, exist_ok=True)
    training = upload(client, folder, varied_chats(19))
    job = client.fine_tuning.jobs.create(**CREATE, training_file=training.id, extra_body={"nproc": nproc})
    assert job.nproc == nproc  # shown on the job, as asked
    if during:
        during(job.id)
    return wait_for(client, job.id, timeout=150)


def losses(client, job) -> list[float]:
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    return [float(r["train_loss"]) for r in rows]


def adapter(home: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(home / "state" / "jobs" / job_id / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def launcher_of(timeout: float = 60) -> int:
    """The pid of the torchrun this process's worker started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in children(os.getpid()) if b"tunelab.train.launch" in cmdline(p)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the worker started no torchrun")


def ranks(launcher: int, timeout: float = 60) -> dict[int, int]:
    """RANK -> pid of the processes torchrun (`launcher`) started, read from /proc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for pid in children(launcher):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = pid
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError(f"torchrun {launcher} did not start two ranks")


def children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def assert_gone(pids, timeout: float = 15) -> None:
    """Each process has exited (a zombie its parent has not yet reaped counts as gone)."""
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"still running: {[(p, cmdline(p), Path(f'/proc/{p}/stat').read_bytes()[:80]) for p in left]}"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_two_processes_train_the_same_losses_and_adapter_as_one(lab, home, tmp_path, reference):
    client = lab.client()
    job = run_job(client, tmp_path, nproc=2)
    assert job.status == "succeeded", job.error
    assert losses(client, job) == pytest.approx(reference["losses"], abs=2e-6)
    assert_same_adapter(adapter(home, job.id), reference["adapter"])
    assert reference["adapter"]["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].abs().max() > 0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_a_rank_killed_mid_epoch_requeues_the_job_which_ends_as_if_never_interrupted(lab, home, tmp_path,
                                                                                      reference):
    client = lab.client()
    killed = {}  # the processes of the first attempt

    def kill_rank_1(job_id: str):
        deadline = time.monotonic() + 60
        launcher = launcher_of()
        pids = ranks(launcher)
        checkpoint = home / "state" / "jobs" / job_id / "checkpoints" / "step-000002"
        while not checkpoint.exists():
            assert time.monotonic() < deadline, "no checkpoint at step 2"
            time.sleep(0.005)
        os.kill(pids[1], signal.SIGKILL)
        killed.update(pids, launcher=launcher)

    job = run_job(client, tmp_path, nproc=2, during=kill_rank_1)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any("exited with code" in m for m in messages), messages  # the group ended; the job was requeued
    resumed = [m for m in messages if m.startswith("Fine-tuning job resumed at step")]
    assert resumed and int(resumed[0].split()[5].split("/")[0]) < 7, messages  # mid-epoch 1, from a checkpoint
    assert_same_adapter(adapter(home, job.id), reference["adapter"])
    assert losses(client, job) == pytest.approx(reference["losses"], abs=2e-6)
    assert_gone(killed.values())  # nothing of the first attempt is left running


@pytest.mark.parametrize("nproc", [0, 65, "2"])
def test_a_bad_nproc_is_refused_naming_it(service, tmp_path, nproc):
    client = service.client()
    training = upload(client, tmp_path, varied_chats(12))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny", training_file=training.id, extra_body={"nproc": nproc})
    assert caught.value.body["param"] == "nproc"
    assert client.fine_tuning.jobs.list().data == []  # nothing recorded


@pytest.mark.slow
def test_a_paused_two_process_job_stops_every_rank_at_one_step_and_resumes_to_the_same_adapter(
        lab, home, tmp_path, reference):
    client = lab.client()
    training = upload(client, tmp_path, varied_chats(19))
    job = client.fine_tuning.jobs.create(**CREATE, training_file=training.id, extra_body={"nproc": 2})
    pids = ranks(launcher_of())
    while not (home / "state" / "jobs" / job.id / "checkpoints" / "step-000002").exists():
        time.sleep(0.005)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    assert_gone(pids.values())  # every rank stopped (rank 0 records the outcome just before it leaves)
    step = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)
    assert step < STEPS
    client.fine_tuning.jobs.resume(job.id)
    job = wait_for(client, job.id, timeout=150)
    assert job.status == "succeeded", job.error
    assert_same_adapter(adapter(home, job.id), reference["adapter"])


@pytest.mark.slow
def test_a_cancelled_two_process_job_leaves_no_process_behind(lab, tmp_path):
    client = lab.client()
    training = upload(client, tmp_path, varied_chats(19))
    job = client.fine_tuning.jobs.create(**CREATE, training_file=training.id, extra_body={"nproc": 2})
    launcher = launcher_of()
    pids = ranks(launcher)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert_gone([launcher, *pids.values()])


@pytest.mark.slow
def test_a_server_stopping_checkpoints_every_rank_and_the_next_server_resumes_to_the_same_adapter(
        monkeypatch, tiny_model, home, tmp_path, reference):
    from tunelab.models.catalog import import_model

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    import_model(tiny_model, "tiny")
    with serve_in_thread() as running:
        client = running.client()
        training = upload(client, tmp_path, varied_chats(19))
        job = client.fine_tuning.jobs.create(**CREATE, training_file=training.id, extra_body={"nproc": 2})
        launcher = launcher_of()
        pids = ranks(launcher)
        while not (home / "state" / "jobs" / job.id / "checkpoints" / "step-000002").exists():
            time.sleep(0.005)
    assert_gone([launcher, *pids.values()])  # the shutdown waited for every rank
    with serve_in_thread() as running:
        client = running.client()
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
        assert any("because the server is shutting down" in m for m in messages), messages
        job = wait_for(client, job.id, timeout=150)
        assert job.status == "succeeded", job.error
        assert_same_adapter(adapter(home, job.id), reference["adapter"])
        assert losses(client, job) == pytest.approx(reference["losses"], abs=2e-6)


def test_the_cli_refuses_a_bad_nproc_naming_it(capsys, tiny_model, tmp_path):
    from tunelab.cli.main import main

    data = write_jsonl(tmp_path / "train.jsonl", varied_chats(12))
    for bad in ("0", "65"):
        with pytest.raises(SystemExit) as exited:
            main(["train", "--model", str(tiny_model), "--train", str(data), "--nproc", bad, "--out",
                  str(tmp_path / "run")])
        assert exited.value.code == 2
        assert "--nproc must be from 1 to 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_cli_on_two_processes_writes_the_adapter_one_process_writes(monkeypatch, tiny_model, tmp_path):
    import subprocess
    import sys

    monkeypatch.setenv("TUNELAB_TRAIN_PRECISION", "fp32")
    data = write_jsonl(tmp_path / "train.jsonl", varied_chats(19))
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        done = subprocess.run([sys.executable, "-c", "from tunelab.cli.main import main; main()", "train",
                               "--model", str(tiny_model), "--train", str(data), "--seed", "5", "--epochs", "2",
                               "--batch-size", "3", "--out", str(out), "--nproc", str(nproc)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("Done in 14 steps") == 1  # rank 0 alone prints the summary
        runs[nproc] = out
    assert_same_adapter(load_file(runs[1] / "adapter" / "adapter_model.safetensors"),
                        load_file(runs[2] / "adapter" / "adapter_model.safetensors"))
    one, two = ([float(r["train_loss"]) for r in csv.DictReader((runs[n] / "results.csv").open())] for n in (1, 2))
    assert len(one) == 14 and two == pytest.approx(one, abs=2e-6)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@CUDA
def test_a_job_on_cuda_trains_in_bf16_and_reports_its_gpu_memory(lab, tmp_path):
    client = lab.client()
    job = run_job(client, tmp_path, nproc=1)
    assert job.status == "succeeded", job.error
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data if e.type == "metrics"]
    assert len(metrics) == STEPS and all(m["gpu_memory_mb"] > 0 for m in metrics)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (one NCCL rank each)")
def test_two_gpus_over_nccl_train_what_one_gpu_trains(lab, home, tmp_path):
    client = lab.client()
    one = run_job(client, tmp_path / "one", nproc=1)
    two = run_job(client, tmp_path / "two", nproc=2)
    assert one.status == two.status == "succeeded", (one.error, two.error)
    # bf16 autocast: each rank multiplies a different set of conversations, so the two agree to bf16's rounding
    assert losses(client, two) == pytest.approx(losses(client, one), abs=2e-2)
    a, b = adapter(home, one.id), adapter(home, two.id)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=5e-3, rtol=0, msg=name)
