"""Per-step metrics: the `results.csv` the cloud writes, and the reporter interface the recipe talks to."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

COLUMNS = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
           "full_valid_loss", "full_valid_mean_token_accuracy"]


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float
    tokens: int  # real (unpadded) tokens processed in this step
    tokens_per_second: float  # over the run so far
    eta_seconds: float
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None

    def row(self) -> dict:
        values = asdict(self)
        return {c: ("" if values[c] is None else values[c]) for c in COLUMNS}

    def openai(self) -> dict:
        """The `data` of an OpenAI metrics event: step, total_steps and the metrics this step has."""
        values = {c: v for c, v in asdict(self).items() if c in COLUMNS and v is not None}
        return {**values, "total_steps": self.total_steps}


class Reporter(Protocol):
    """What the recipe tells the outside world: the CLI draws a progress bar, the job worker writes events."""

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None: ...
    def step(self, metrics: StepMetrics) -> None: ...
    def message(self, text: str) -> None: ...
    def checkpoint(self, step: int, path: Path, metrics: dict) -> None: ...
    def finish(self) -> None: ...


@dataclass
class ResultsCsv:
    """Append-only `results.csv`, flushed after every row so it can be read while training runs."""

    path: Path
    resumed_at: int = 0

    def __post_init__(self):
        kept = []
        if self.resumed_at and self.path.exists():  # drop rows past the checkpoint we resume from
            with self.path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.resumed_at]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, metrics: StepMetrics) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in metrics.row().items()})
