"""Which checkpoint to use: the epoch whose validation metric is lowest, said in plain words, and, with a
patience, when to stop training because that metric has stopped improving.

    tracker = Tracker()
    tracker.observe(epoch=1, step=12, value=1.31)      # at every epoch's end, after the full validation pass
    tracker.epochs_since_best                          # 0 while it improves; early stopping waits `patience` epochs
    tracker.recommendation().reason                    # "the last checkpoint has the lowest validation loss …"

The metric is the epoch-end validation metric where lower is better (`METRIC`, the full validation loss: the
supervised loss for supervised jobs, the preference loss for DPO), so the rule is the same for both. Mid-epoch
checkpoints carry no full validation figure and are never recommended. The same rule serves a running recipe
(`Tracker`, rebuilt from the checkpoints on disk when a run resumes) and the service, which recommends from the
checkpoints a job recorded (`recommend`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints

METRIC = "full_valid_loss"


@dataclass(frozen=True)
class Point:
    """One epoch's end: its checkpoint (a model id or directory name), step, epoch and validation metric."""

    step: int
    epoch: int
    value: float
    name: str = ""


@dataclass(frozen=True)
class Recommendation:
    best: Point
    last: Point
    stopped_early: bool = False  # training ended before its planned epochs, on the best checkpoint's weights

    @property
    def reason(self) -> str:
        best, last = self.best, self.last
        if best.step == last.step:
            return (f"the last checkpoint has the lowest validation loss: use checkpoint {best.epoch} "
                    f"(epoch {best.epoch}, step {best.step}, loss {best.value:.3f})")
        text = (f"validation loss rose after epoch {best.epoch}: use checkpoint {best.epoch} (step {best.step}, "
                f"loss {best.value:.3f}; the last, epoch {last.epoch}, has {last.value:.3f})")
        if self.stopped_early:
            text += (f"; early stopping ended training after epoch {last.epoch}, and the fine-tuned model holds "
                     f"checkpoint {best.epoch}'s weights")
        return text

    def to_dict(self) -> dict:
        return {"id": self.best.name, "step": self.best.step, "epoch": self.best.epoch,
                "valid_loss": round(self.best.value, 6), "reason": self.reason,
                "last": {"id": self.last.name, "step": self.last.step, "epoch": self.last.epoch,
                         "valid_loss": round(self.last.value, 6)}}


def recommend(points: list[Point], stopped_early: bool = False) -> Recommendation | None:
    """The lowest point (the earliest of equal ones) against the last; None without any epoch-end figure."""
    points = sorted(points, key=lambda p: p.step)
    if not points:
        return None
    best = min(points, key=lambda p: p.value)  # min keeps the first of equal values: the earlier epoch
    return Recommendation(best, points[-1], stopped_early)


@dataclass
class Tracker:
    """The epoch-end figures of one run, in order; what early stopping and the final recommendation read."""

    points: list[Point] = field(default_factory=list)

    @classmethod
    def from_checkpoints(cls, root: Path) -> Tracker:
        """The figures a resumed run saw before: the best checkpoint is never pruned (see `save_checkpoint`'s
        `keep_step`), so the lowest figure among those on disk is the run's lowest."""
        tracker = cls()
        for path in checkpoints.complete_checkpoints(root):
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                continue
            value = state.get("metrics", {}).get(METRIC)
            if value is not None:
                tracker.observe(state["epoch"], state["step"], value, path.name)
        return tracker

    def observe(self, epoch: int, step: int, value: float, name: str = "") -> None:
        self.points = [p for p in self.points if p.step != step] + [Point(step, epoch, float(value), name)]
        self.points.sort(key=lambda p: p.step)

    @property
    def best(self) -> Point | None:
        found = recommend(self.points)
        return found.best if found else None

    @property
    def epochs_since_best(self) -> int:
        """Epochs ended since the lowest figure (0 when the latest is the lowest, or nothing was measured)."""
        if not self.points:
            return 0
        return self.points[-1].epoch - self.best.epoch

    def recommendation(self, stopped_early: bool = False) -> Recommendation | None:
        return recommend(self.points, stopped_early)
