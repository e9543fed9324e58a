"""The checkpoint a job recommends: the rule of train/best.py applied to the checkpoints the job recorded, so the
recommendation names a model id the user can deploy, compare or export (`ft:…:ckpt-step-N`).

It is worked out when asked for (the job object, the event at the job's end) from the checkpoint records, which
carry each epoch's full validation loss; the recipe never prunes the best one, so the records always hold it.
"""

from __future__ import annotations

import json
import math

from ..models.registry import Registry
from ..train import best


def recommended_checkpoint(registry: Registry, row) -> dict | None:
    """`{"id", "step", "epoch", "valid_loss", "reason", "last"}` for a job row of the `jobs` table, or None
    without a validation file or before the first epoch ends."""
    request = json.loads(row["request"])
    if not request.get("validation_file") or not row["hyperparameters"]:
        return None
    resolved = json.loads(row["hyperparameters"]).get("resolved") or {}
    per_epoch, total = resolved.get("steps_per_epoch"), resolved.get("total_steps")
    if not per_epoch:
        return None
    records, _ = registry.checkpoints(row["id"], after=None, limit=10_000)
    points = [best.Point(r["step"], math.ceil(r["step"] / per_epoch), r["metrics"][best.METRIC], r["model"])
              for r in records if r["metrics"].get(best.METRIC) is not None]
    # Succeeded before the planned steps: only early stopping ends a job so.
    stopped_early = bool(row["status"] == "succeeded" and points and total and max(p.step for p in points) < total)
    found = best.recommend(points, stopped_early)
    return found.to_dict() if found else None
