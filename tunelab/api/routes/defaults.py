"""`/v1/fine_tuning/defaults`: what a fine-tuning job gets for what it leaves out (tunelab's own route; the studio's
wizard shows it): the base model, and each hyperparameter's default `auto` with its bounds, its rule and, for a
given training file, the number it resolves to."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ...data.report import auto_hyperparameters
from ...data.validate import validate_file
from ...train.config import BASE_LEARNING_RATE
from ..schemas import ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(prefix="/fine_tuning", tags=["fine-tuning"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})

# The bounds `POST /v1/fine_tuning/jobs` enforces (train/config.py's BOUNDS; a test keeps the two in step).
BOUNDS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (0, 10)}
RULES = {
    "n_epochs": "3; more for small sets (min(25, ceil(100/n)) when 3n < 100), fewer for huge ones "
                "(max(1, 25000 // n) when 3n > 25000)",
    "batch_size": "the largest power of two not above n/32, between 1 and 8",
    "learning_rate_multiplier": f"1.0, scaling the base learning rate (LoRA {BASE_LEARNING_RATE['lora']:g}, "
                                f"full {BASE_LEARNING_RATE['full']:g})",
}


class Default(BaseModel):
    default: Literal["auto"] = "auto"
    minimum: float
    maximum: float
    rule: str
    auto: float | None  # what "auto" resolves to for the training file given (the multiplier: always 1.0)


class TrainingFileSize(BaseModel):
    id: str
    examples: int


class FineTuningDefaults(BaseModel):
    object: Literal["fine_tuning.defaults"] = "fine_tuning.defaults"
    model: str
    method: Literal["supervised"] = "supervised"
    hyperparameters: dict[str, Default]
    training_file: TrainingFileSize | None


@router.get("/defaults", response_model=FineTuningDefaults)
def fine_tuning_defaults(training_file: str | None = Query(None, max_length=64, description="a file id: what "
                                                            "`auto` resolves to for it"),
                         svc: Service = Depends(service)) -> dict:
    """The default base model (`TUNELAB_DEFAULT_MODEL`) and each hyperparameter's default, bounds and `auto` rule;
    with `training_file`, the values `auto` resolves to for its valid examples."""
    size, auto = None, {"learning_rate_multiplier": 1.0}
    if training_file:
        svc.files.training_data(training_file, "training_file")
        examples = len(validate_file(svc.files.path(training_file), name=training_file).examples)
        size = {"id": training_file, "examples": examples}
        auto = auto_hyperparameters(examples) if examples else auto
    return {"model": svc.settings.default_model, "training_file": size,
            "hyperparameters": {name: {"minimum": low, "maximum": high, "rule": RULES[name], "auto": auto.get(name)}
                                for name, (low, high) in BOUNDS.items()}}
