"""Wire types of `/v1/fine_tuning`: the job request and object, events, checkpoints and the defaults."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...train.config import check_bounds
from ...train.launch import MAX_PROCESSES
from ..protocol import CursorPage, Page

Auto = Literal["auto"]
SHOWN = ("n_epochs", "batch_size", "learning_rate_multiplier")


class Hyperparameters(BaseModel):
    """`"auto"` or a value, within the cloud's bounds."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier")
    @classmethod
    def _bounds(cls, value, info):
        return check_bounds(info.field_name, value)


class Supervised(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    """DPO's: the supervised ones and `beta`, `"auto"` (0.1) or above 0 and at most 2."""

    beta: Auto | float = "auto"

    @field_validator("beta")
    @classmethod
    def _beta(cls, value, info):
        return check_bounds("beta", value)


class Dpo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class EarlyStopping(BaseModel):
    """tunelab's own: stop once the full validation loss has not improved for `patience` epochs."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(ge=1, le=50, strict=True)


class JobCreate(BaseModel):
    """`POST /v1/fine_tuning/jobs`. Unknown fields are refused, so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int | None = Field(default=None, ge=0, le=2_147_483_647)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    # tunelab's own: training processes under torchrun (the SDK sends it with `extra_body={"nproc": 2}`).
    nproc: int = Field(default=1, ge=1, le=MAX_PROCESSES, strict=True)
    # tunelab's own: `extra_body={"early_stopping": {"patience": 2}}`; needs a validation file.
    early_stopping: EarlyStopping | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None:
            if len(v) > 16:
                raise ValueError("at most 16 key-value pairs")
            for key, value in v.items():
                if len(key) > 64 or len(value) > 512:
                    raise ValueError("keys are at most 64 characters and values at most 512")
        return v


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class ShownHyperparameters(BaseModel):
    n_epochs: Auto | int
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float


class ShownDpoHyperparameters(ShownHyperparameters):
    beta: Auto | float


class MethodShown(BaseModel):
    """The job's method as the cloud shows it: `{"type": "supervised", "supervised": {"hyperparameters": …}}` or
    `{"type": "dpo", "dpo": {"hyperparameters": {…, "beta": …}}}` (the other key null)."""

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: dict[str, ShownHyperparameters] | None = None
    dpo: dict[str, ShownDpoHyperparameters] | None = None


JobStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]


class FineTuningJob(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: JobStatus
    training_file: str
    validation_file: str | None
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    integrations: list[dict[str, Any]]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    hyperparameters: ShownHyperparameters
    method: MethodShown
    nproc: int  # tunelab's own: how many processes train the job
    # tunelab's own: the early stopping asked for, and the checkpoint to use with why (train/best.py); null
    # without a validation file. The service fills the recommendation from the job's checkpoints.
    early_stopping: EarlyStopping | None = None
    recommended_checkpoint: dict[str, Any] | None = None

    @classmethod
    def of(cls, row, owner: str) -> "FineTuningJob":
        """A row of the `jobs` table as the cloud shows a job: the resolved hyperparameters once training knows
        them, `"auto"` until then."""
        request = json.loads(row["request"])
        resolved = json.loads(row["hyperparameters"]) if row["hyperparameters"] else None
        shown = {k: (resolved or request["hyperparameters"])[k] for k in SHOWN}
        kind = request.get("method", "supervised")
        method = {"type": "supervised", "supervised": {"hyperparameters": shown}}
        if kind == "dpo":  # beta as asked until training resolves it
            beta = resolved["resolved"].get("beta") if resolved else request["hyperparameters"].get("beta", "auto")
            method = {"type": "dpo", "dpo": {"hyperparameters": {**shown, "beta": beta}}}
        return cls(
            id=row["id"], model=request["model"], created_at=row["created_at"], finished_at=row["finished_at"],
            fine_tuned_model=row["output_model"] if row["status"] == "succeeded" else None,
            organization_id=f"org-{owner}", result_files=[row["result_file"]] if row["result_file"] else [],
            status=row["status"], training_file=request["training_file"],
            validation_file=request["validation_file"], trained_tokens=row["trained_tokens"],
            error=json.loads(row["error"]) if row["error"] else None, seed=request["seed"],
            estimated_finish=row["estimated_finish"] if row["status"] == "running" else None,
            integrations=[], metadata=request["metadata"], user_provided_suffix=request["suffix"],
            hyperparameters=shown, method=method,
            nproc=request.get("nproc", 1))


class JobList(Page[FineTuningJob]):
    pass


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: dict) -> "JobEvent":
        return cls(id=event["id"], created_at=event["created_at"], level=event["level"], message=event["message"],
                   type=event["type"], data=event["data"])


class EventList(Page[JobEvent]):
    pass


class Checkpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, record: dict) -> "Checkpoint":
        return cls(id=record["id"], created_at=record["created_at"], fine_tuned_model_checkpoint=record["model"],
                   fine_tuning_job_id=record["job_id"], step_number=record["step"],
                   metrics={"step": record["step"], **record["metrics"]})


class CheckpointList(CursorPage[Checkpoint]):
    pass


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
