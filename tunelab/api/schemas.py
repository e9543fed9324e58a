"""The wire types of the OpenAI-compatible API: what the routes accept and return, as `/openapi.json` shows.

Shapes follow the OpenAI API (files, fine-tuning jobs, events, checkpoints, models); tunelab adds a few fields
(`parameters`, `installed` on base models, `paused` as a job status), which the SDK's models tolerate.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..train.config import check_bounds

Auto = Literal["auto"]


# --- errors -----------------------------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- files ------------------------------------------------------------------------------------------------------

class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Problem(BaseModel):
    file: str
    line: int = Field(description="1-based; 0 for the file as a whole")
    rule: str
    message: str


class HistogramBin(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: int = Field(alias="from")
    to: int
    count: int


class TokenStats(BaseModel):
    examples: int
    total: int
    min: int
    median: float
    p95: int
    max: int
    trained_total: int
    trained_median: float
    histogram: list[HistogramBin]
    over_limit: list[int]
    context_limit: int


class FileCheck(BaseModel):
    id: str
    filename: str
    file: str
    examples: int
    errors: list[Problem]
    warnings: list[Problem]
    tokens: TokenStats | None


class FileReport(BaseModel):
    """`GET /v1/files/{id}/report`: what `tunelab data check` reports, for uploaded files."""

    object: Literal["file.report"] = "file.report"
    ok: bool
    model: str | None
    files: list[FileCheck]
    n_epochs: int | None
    batch_size: int | None
    billed_tokens: int | None
    estimated_seconds: float | None
    estimate_basis: str | None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


# --- fine-tuning jobs -------------------------------------------------------------------------------------------

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


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


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


class MethodShown(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, ShownHyperparameters]


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


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class Checkpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


# --- models -----------------------------------------------------------------------------------------------------

class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None
    # tunelab's additions
    kind: Literal["base", "fine-tuned", "checkpoint"]
    parameters: str | None = None
    installed: bool | None = None
    chat_template: str | None = None
    fine_tuning_job_id: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# --- chat completions -------------------------------------------------------------------------------------------

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, refusal …

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. Fields the cloud accepts that do not apply here (`user`, `store`,
    `metadata`, `service_tier`, …) are accepted and ignored, as the SDK may send them."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return v


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[dict[str, Any]] = []


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
    completion_tokens_details: dict[str, int] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
