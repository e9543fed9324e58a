"""Atomic, pickle-free training checkpoints.

A checkpoint is a directory `checkpoints/step-<N>/` holding the trainable weights (for LoRA a standard PEFT
adapter, deployable as it is), the optimizer state and RNG state as safetensors, the scheduler and data position
as JSON, and `MANIFEST.json` with the sha256 of every file. It is written in a temporary directory beside it,
fsynced and renamed into place, so a crash leaves either the whole checkpoint or none; resume only trusts a
directory whose manifest matches its files. Older checkpoints are pruned only once the new one has been read back
and verified. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..crashpoints import crash_point
from ..errors import CheckpointError, TunelabError
from ..store.blobs import fsync_path
from .faults import disk_full

MANIFEST = "MANIFEST.json"
PREFIX = "step-"


def save_checkpoint(root: Path, step: int, *, write_weights, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int, keep_step: int | None = None) -> Path:
    """Write checkpoint `step` under `root` and keep only the newest `keep` complete ones, and the one at
    `keep_step` (the run's best so far: the checkpoint recommended to the user must outlive the pruning).

    `write_weights(dir)` saves the model's trainable weights into `dir`; `state` is JSON (scheduler, position).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(root, step)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        write_weights(work)
        crash_point("checkpoint.after_weights")
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, work / "optimizer.safetensors")
        crash_point("checkpoint.after_optimizer")
        save_file({"torch": torch.get_rng_state()}, work / "rng.safetensors")
        crash_point("checkpoint.after_rng")
        (work / "state.json").write_text(json.dumps({**state, "optimizer_param_groups": groups}, indent=2))
        crash_point("checkpoint.after_state")
        files = sorted(p for p in work.rglob("*") if p.is_file())
        manifest = {"step": step, "files": {str(p.relative_to(work)): _sha256(p) for p in files}}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for p in [*files, work / MANIFEST]:
            fsync_path(p)
        crash_point("checkpoint.before_rename")
        if final.exists():  # a checkpoint at the same step (resumed run): replace it whole
            shutil.rmtree(final)
        os.rename(work, final)
        fsync_path(root)
        crash_point("checkpoint.after_rename")
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)  # also gives back the space a save that ran out of it took
        if disk_full(exc):
            raise TunelabError(
                f"the disk is full: the checkpoint at step {step} could not be written; the previous checkpoint is "
                "intact. Free some space, then create the job again (or `tunelab train --resume` for a run started "
                "from the command line)",
                code="disk_full") from None
        raise
    verify(final)  # read back before anything older goes: the previous checkpoint stays until this one is good
    for old in complete_checkpoints(root)[:-keep]:
        if old != checkpoint_path(root, keep_step):
            shutil.rmtree(old, ignore_errors=True)
    crash_point("checkpoint.after_prune")
    return final


def checkpoint_path(root: Path, step: int | None) -> Path | None:
    return root / f"{PREFIX}{step:06d}" if step is not None else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories whose manifest is present, oldest first (hashes are checked on load)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies; a damaged one is skipped in favour of the one before it."""
    for path in reversed(complete_checkpoints(root)):
        try:
            verify(path)
        except CheckpointError:
            continue
        return path
    return None


def verify(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, digest in manifest["files"].items():
            if _sha256(path / name) != digest:
                raise CheckpointError(f"checkpoint {path} is damaged: {name} does not match its manifest")
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    return manifest


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimizer and RNG state from a verified checkpoint; return its JSON state."""
    verify(path)
    state = json.loads((path / "state.json").read_text())
    groups = state.pop("optimizer_param_groups")
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), groups))
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state


def clean_partial(root: Path) -> None:
    """Remove temporary directories left by a save that was interrupted."""
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{key}"] = tensor.contiguous()
    return tensors, state_dict["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": groups}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

