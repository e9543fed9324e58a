"""Per-step metrics: the `results.csv` the cloud writes, and the reporter interface the recipe talks to."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..crashpoints import crash_point
from ..errors import CheckpointError

COLUMNS = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
           "full_valid_loss", "full_valid_mean_token_accuracy"]
# A DPO run's (train/preference.py): the loss is DPO's; the reward margin is the mean of β·(chosen log-ratio −
# rejected log-ratio), the reward accuracy the share of pairs where it is positive; the log-probabilities are the
# policy's, summed over each answer's tokens and averaged over the pairs.
DPO_COLUMNS = ["step", "train_loss", "train_reward_margin", "train_reward_accuracy", "train_chosen_logp",
               "train_rejected_logp", "valid_loss", "valid_reward_margin", "valid_reward_accuracy",
               "full_valid_loss", "full_valid_reward_margin", "full_valid_reward_accuracy"]


def columns_for(objective: str) -> list[str]:
    return DPO_COLUMNS if objective == "dpo" else COLUMNS


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float | None  # None in a DPO run (its accuracy is the reward accuracy, in extra)
    tokens: int  # real (unpadded) tokens processed in this step
    tokens_per_second: float  # over the run so far
    eta_seconds: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    gpu_memory_mb: float | None = None  # peak allocated on the GPU (CUDA runs); in events, not in results.csv
    extra: dict = field(default_factory=dict)  # an objective's own metrics (DPO_COLUMNS), by column name

    def record(self, prefix: str, measured: tuple) -> None:
        """Set the `prefix` ("valid", "full_valid") metrics from an evaluation: (loss, token accuracy) for a
        supervised run, (loss, None, {name: value}) for a DPO run."""
        loss, accuracy, *extra = measured
        setattr(self, f"{prefix}_loss", loss)
        setattr(self, f"{prefix}_mean_token_accuracy", accuracy)
        for name, value in (extra[0] if extra else {}).items():
            self.extra[f"{prefix}_{name}"] = value

    def _values(self) -> dict:
        values = asdict(self)
        return {**values, **values.pop("extra")}

    def row(self, columns: list[str] = COLUMNS) -> dict:
        values = self._values()
        return {c: ("" if values.get(c) is None else values[c]) for c in columns}

    def openai(self) -> dict:
        """The `data` of an OpenAI metrics event: step, total_steps and the metrics this step has."""
        values = {c: v for c, v in self._values().items() if c in COLUMNS + DPO_COLUMNS and v is not None}
        gpu = {"gpu_memory_mb": round(self.gpu_memory_mb, 1)} if self.gpu_memory_mb is not None else {}
        return {**values, "total_steps": self.total_steps, **gpu}


class Reporter(Protocol):
    """What the recipe tells the outside world: the CLI draws a progress bar, the job worker writes events."""

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None: ...
    def step(self, metrics: StepMetrics) -> None: ...
    def message(self, text: str) -> None: ...
    def checkpoint(self, step: int, path: Path, metrics: dict) -> None: ...
    def finish(self) -> None: ...


@dataclass
class ResultsCsv:
    """Append-only `results.csv`: each row flushed and fsynced as it is written, so it can be read while training
    runs and a crash cuts at most the row being written. A resumed run keeps exactly the rows up to its
    checkpoint: the kept lines are written beside the file and renamed over it, never rewritten in place."""

    path: Path
    resumed_at: int = 0
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))

    def __post_init__(self):
        header = ",".join(self.columns) + "\r\n"  # the csv module's line ending, as in every row
        kept = []
        if self.resumed_at and self.path.exists():
            with self.path.open(newline="") as f:
                lines = f.read().splitlines(keepends=True)[1:]
            kept = lines[:self.resumed_at]
            complete = [line.endswith("\n") and line.split(",", 1)[0] == str(i + 1) for i, line in enumerate(kept)]
            if len(kept) < self.resumed_at or not all(complete):
                raise CheckpointError(f"{self.path} does not hold the {self.resumed_at} rows of the checkpoint "
                                      "it resumes from")
        beside = self.path.with_name(f".{self.path.name}.tmp")
        with beside.open("w", newline="") as f:
            f.write(header + "".join(kept))
            f.flush()
            os.fsync(f.fileno())
        crash_point("results.before_rename")
        os.replace(beside, self.path)

    def write(self, metrics: StepMetrics) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in metrics.row(self.columns).items()})
            f.flush()
            os.fsync(f.fileno())
