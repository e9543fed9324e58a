"""Checkpoints within an epoch (every N steps, every N minutes), pruning that keeps the previous checkpoint until
the new one verifies, and a results.csv that a crash cannot cut."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.train import checkpoints
from tunelab.train.config import parse_config
from tunelab.train.metrics import COLUMNS, ResultsCsv, StepMetrics
from tunelab.train.recipe import run
from conftest import TRAVEL


class Recorder:
    def __init__(self):
        self.checkpoints = []

    def start(self, *args): ...
    def step(self, metrics): ...
    def message(self, text): ...
    def finish(self): ...

    def checkpoint(self, step, path, metrics):
        self.checkpoints.append(step)


def config(tiny_model, tmp_path, out, **overrides):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join((TRAVEL / "train.jsonl").read_text().splitlines()[:10]) + "\n")
    values = dict(model=str(tiny_model), train_file=train, n_epochs=1, batch_size=2, seed=3, out=out)
    return parse_config(**{**values, **overrides})


def test_a_long_epoch_is_checkpointed_every_n_steps_or_minutes_and_only_the_newest_kept(tiny_model, tmp_path):
    by_steps = Recorder()
    run(config(tiny_model, tmp_path, tmp_path / "steps", checkpoint_every_steps=2, keep_checkpoints=2), by_steps)
    assert by_steps.checkpoints == [2, 4, 5]  # and the epoch's end
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path / "steps" / "checkpoints")] == \
        ["step-000004", "step-000005"]

    by_time = Recorder()
    run(config(tiny_model, tmp_path, tmp_path / "minutes", checkpoint_every_minutes=1e-9), by_time)
    assert by_time.checkpoints == list(range(1, 6))  # an interval shorter than a step: after every step


def metrics(step: int) -> StepMetrics:
    return StepMetrics(step, 10, 1, 1.0 / step, 0.5, 10, 1.0, 0.0)


def test_results_csv_resumes_with_exactly_the_checkpoints_rows_whatever_a_crash_left(tmp_path):
    path = tmp_path / "results.csv"
    results = ResultsCsv(path)
    for step in range(1, 7):
        results.write(metrics(step))
    whole = path.read_bytes()
    path.write_bytes(whole + b"7,0.14")  # a row cut by a crash
    ResultsCsv(path, resumed_at=4)
    lines = whole.split(b"\r\n")
    assert path.read_bytes() == b"\r\n".join(lines[:5]) + b"\r\n"  # header and steps 1-4, byte for byte
    assert lines[0].decode() == ",".join(COLUMNS)
    assert not list(tmp_path.glob(".*.tmp"))  # the rewrite went beside the file and was renamed over it

    path.write_bytes(b"\r\n".join(lines[:3]) + b"\r\n")
    with pytest.raises(TunelabError, match="does not hold the 4 rows"):
        ResultsCsv(path, resumed_at=4)  # never resume with rows missing


def test_a_checkpoint_that_finds_the_disk_full_leaves_the_previous_one_intact(tmp_path):
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs to fill (needs root)")
    try:
        weights = torch.nn.Linear(256, 256)  # 256 KiB of weights, 512 KiB of optimizer state: one fits, two do not
        optimizer = torch.optim.AdamW(weights.parameters())
        weights(torch.ones(1, 256)).sum().backward()
        optimizer.step()

        def write_weights(d):
            from safetensors.torch import save_file
            save_file({"w": weights.weight.detach()}, d / "weights.safetensors")

        save = dict(write_weights=write_weights, optimizer=optimizer, state={"step": 0}, keep=1)
        first = checkpoints.save_checkpoint(disk / "ckpt", 1, **save)
        with pytest.raises(TunelabError) as raised:
            checkpoints.save_checkpoint(disk / "ckpt", 2, **save)
        assert raised.value.code == "disk_full" and "previous checkpoint is intact" in raised.value.message
        assert checkpoints.latest_checkpoint(disk / "ckpt") == first  # it still verifies
        assert [p.name for p in (disk / "ckpt").iterdir()] == [first.name]  # the partial save is gone
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_out_of_memory_is_told_by_the_exception_type_cuda_included():
    from tunelab.train.faults import disk_full, out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError  # what a CUDA allocation failure raises
    assert out_of_memory(MemoryError())
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(1 << 62, dtype=torch.uint8)  # PyTorch's CPU allocator refuses it
    assert out_of_memory(cpu.value)
    assert not out_of_memory(RuntimeError("shape mismatch")) and not disk_full(RuntimeError("no"))


def test_a_onednn_primitive_failure_is_out_of_memory_only_under_a_memory_limit():
    import resource

    from tunelab.train.faults import out_of_memory

    onednn = RuntimeError("could not create a primitive")  # oneDNN's whole message when its allocation fails
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    assert soft == resource.RLIM_INFINITY and not out_of_memory(onednn)
    resource.setrlimit(resource.RLIMIT_AS, (1 << 42, hard))  # a limit far above what this process uses
    try:
        assert out_of_memory(onednn)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
