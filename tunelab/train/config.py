"""One typed config per fine-tune, and the rule that resolves its `"auto"` hyperparameters.

The `"auto"` rule (recorded with every run and printed before training starts):
- `n_epochs`: 3, like the cloud; small data sets get more so the model sees at least ~100 examples in all
  (`min(25, ceil(100 / n))` when `3 n < 100`), very large ones fewer (`max(1, 25000 // n)` when `3 n > 25000`).
- `batch_size`: the largest power of two not above `n / 32`, between 1 and 8 (160 examples → 4). Small batches
  give small data sets enough optimizer steps; on a CPU a bigger batch buys no speed.
- `learning_rate_multiplier`: 1.0, scaling the method's base learning rate (LoRA 4e-4, full 2e-5; for DPO,
  LoRA 1e-4 and full 5e-6: a preference step moves the answers' log-probabilities directly, and a smaller rate
  keeps the model near its reference).
- `beta` (DPO): 0.1, the strength of the pull towards the reference model; higher is more conservative.

The matrix products of a LoRA run's frozen base weights are bf16 on CPUs that compute bf16 natively
(`precision.py`; `TUNELAB_TRAIN_PRECISION`), recorded as `matmul_precision`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..errors import InvalidRequest
from .precision import resolve_precision

BASE_LEARNING_RATE = {"lora": 4e-4, "full": 2e-5}
DPO_LEARNING_RATE = {"lora": 1e-4, "full": 5e-6}
DEFAULT_BETA = 0.1  # what "auto" means for DPO's beta (the cloud's and TRL's default)
WARMUP_SHARE = 0.05  # of all steps, linear warm-up before a linear decay to zero

# How each field is called on the command line, so an error names what the user typed.
FLAGS = {
    "early_stopping_patience": "--early-stopping-patience",
    "n_epochs": "--epochs", "batch_size": "--batch-size", "learning_rate_multiplier": "--learning-rate-multiplier",
    "seed": "--seed", "method": "--method", "lora_rank": "--lora-rank", "suffix": "--suffix",
    "train_file": "--train", "validation_file": "--validation", "model": "--model", "out": "--out",
    "objective": "--dpo", "beta": "--beta", "init_adapter": "--from-adapter",
}


# The cloud's bounds for each hyperparameter that may also be "auto"; the API's request schema checks the same.
BOUNDS = {
    "n_epochs": (lambda v: 1 <= v <= 50, "must be 'auto' or an integer from 1 to 50"),
    "batch_size": (lambda v: 1 <= v <= 256, "must be 'auto' or an integer from 1 to 256"),
    "learning_rate_multiplier": (lambda v: 0 < v <= 10, "must be 'auto' or a number above 0 and at most 10"),
    "beta": (lambda v: 0 < v <= 2, "must be 'auto' or a number above 0 and at most 2"),
}


def check_bounds(field: str, value):
    within, message = BOUNDS[field]
    if value != "auto" and not within(value):
        raise ValueError(message)
    return value


class TrainConfig(BaseModel):
    """What the user asked for; `"auto"` values are resolved by `resolve` once the data size is known."""

    model_config = {"extra": "forbid"}

    model: str
    train_file: Path
    validation_file: Path | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    n_epochs: Literal["auto"] | int = Field(default="auto")
    batch_size: Literal["auto"] | int = Field(default="auto")
    learning_rate_multiplier: Literal["auto"] | float = Field(default="auto")
    seed: int | None = Field(default=None, ge=0, le=2_147_483_647)
    method: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(default=16, ge=1, le=256)
    out: Path | None = None
    eval_every: int | None = Field(default=None, ge=1, description="steps between validation batches")
    max_seq_len: int | None = Field(default=None, ge=16, description="training context; default: the model's")
    keep_checkpoints: int = Field(default=3, ge=1)
    early_stopping_patience: int | None = Field(default=None, ge=1, description="stop once the full validation "
                                                "loss has not improved for this many epochs (needs a validation "
                                                "file); the fine-tune is then the best checkpoint's weights")
    checkpoint_every_steps: int | None = Field(default=None, ge=1, description="a checkpoint every this many steps "
                                               "besides each epoch's; default: TUNELAB_CHECKPOINT_EVERY_STEPS")
    checkpoint_every_minutes: float | None = Field(default=None, gt=0, description="a checkpoint after this many "
                                                   "minutes; default: TUNELAB_CHECKPOINT_EVERY_MINUTES")
    init_adapter: Path | None = Field(default=None, description="start from this LoRA adapter (continued "
                                      "fine-tuning); its rank must equal lora_rank")
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="matrix products of the frozen "
                                                      "base weights (LoRA): bf16 where the CPU has it natively")
    objective: Literal["supervised", "dpo"] = Field(default="supervised", description="supervised: chat files, "
                                                    "cross-entropy; dpo: preference pairs (train/preference.py)")
    beta: Literal["auto"] | float = Field(default="auto", description="DPO's beta")

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier", "beta")
    @classmethod
    def _bounds(cls, value, info):
        return check_bounds(info.field_name, value)


class Hyperparameters(BaseModel):
    """The resolved numbers a run trains with; saved in the run's config.json."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    seed: int
    method: str
    lora_rank: int | None
    lora_alpha: int | None
    warmup_steps: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    matmul_precision: str = "fp32"  # "bf16": the frozen base weights multiply in bf16 (runs before it: fp32)
    objective: str = "supervised"  # or "dpo" (runs before it: supervised)
    beta: float | None = None  # DPO only


def parse_config(**values) -> TrainConfig:
    """Build a TrainConfig, collecting every invalid value into one error that names the flags."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "config"
            problems.append(f"{FLAGS.get(field, field)}: {err['msg'].removeprefix('Value error, ')}")
        first = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else None
        raise InvalidRequest("invalid settings: " + "; ".join(problems), param=first) from None


def auto_epochs(n_examples: int) -> int:
    if 3 * n_examples < 100:
        return min(25, math.ceil(100 / n_examples))
    if 3 * n_examples > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


def auto_batch_size(n_examples: int) -> int:
    size = 1
    while size * 2 <= n_examples / 32 and size * 2 <= 8:
        size *= 2
    return size


def resolve(config: TrainConfig, n_examples: int, n_valid: int) -> Hyperparameters:
    """Turn every `"auto"` into a number for a training set of `n_examples` conversations (or pairs)."""
    epochs = auto_epochs(n_examples) if config.n_epochs == "auto" else config.n_epochs
    batch = auto_batch_size(n_examples) if config.batch_size == "auto" else config.batch_size
    batch = min(batch, n_examples)
    multiplier = 1.0 if config.learning_rate_multiplier == "auto" else float(config.learning_rate_multiplier)
    dpo = config.objective == "dpo"
    base_rate = (DPO_LEARNING_RATE if dpo else BASE_LEARNING_RATE)[config.method]
    steps_per_epoch = math.ceil(n_examples / batch)
    total = steps_per_epoch * epochs
    lora = config.method == "lora"
    return Hyperparameters(
        n_epochs=epochs, batch_size=batch, learning_rate_multiplier=multiplier,
        learning_rate=base_rate * multiplier,
        seed=config.seed if config.seed is not None else random.SystemRandom().randrange(2**31),
        method=config.method, lora_rank=config.lora_rank if lora else None,
        lora_alpha=2 * config.lora_rank if lora else None,
        warmup_steps=max(1, round(WARMUP_SHARE * total)), steps_per_epoch=steps_per_epoch, total_steps=total,
        # A validation batch about five times an epoch: enough points for the curve, little extra compute.
        eval_every=config.eval_every or max(1, steps_per_epoch // 5) if n_valid else 0,
        matmul_precision=resolve_precision(config.precision, config.method),
        objective=config.objective,
        beta=(DEFAULT_BETA if config.beta == "auto" else float(config.beta)) if dpo else None,
    )
