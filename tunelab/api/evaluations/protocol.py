"""Wire types of `/v1/evaluations`: the comparison request and the evaluation object with its progress and
report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import Page, Wire


class PromptItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, max_length=100)
    kind: str | None = Field(default=None, max_length=40, description="off_topic prompts are scored by redirect")
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=64, description="the conversation so far, "
                                           "ending with the user's turn; the system message is the run's")
    reference: str | None = Field(default=None, description="a known good answer")


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidates: list[str] = Field(min_length=1, max_length=4, description="deployment names or model ids")
    prompts: list[PromptItem] = Field(min_length=1, max_length=500)
    system: str | None = Field(default=None, max_length=20_000, description="the system message for every prompt")
    seed: int = 42
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    validation_file: str | None = Field(default=None, description="a file id: validation loss per candidate "
                                        "(default: the fine-tuned candidate's job's)")
    style_file: str | None = Field(default=None, description="a file id whose assistant replies define the style "
                                   "(default: the fine-tuned candidate's training file)")
    checks: list[str] | None = Field(default=None, description="names of registered checks, or the module:name "
                                     "the service was configured with (default: all registered checks)")
    parallel: int = Field(default=1, ge=1, le=8, description="prompts answered at once (each by every candidate); "
                          "above 1 a run is faster and its latency figures are those of a shared engine")


class Progress(BaseModel):
    done: int
    total: int


class Evaluation(Wire):
    """A comparison run; `report` (on retrieval only) once it has completed."""

    optional = frozenset({"report"})
    id: str
    object: Literal["evaluation"] = "evaluation"
    status: Literal["running", "completed", "failed"]
    created_at: int
    finished_at: int | None
    candidates: list[str]
    progress: Progress
    error: str | None
    request: dict[str, Any]
    report: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: dict) -> "Evaluation":
        made = cls(id=record["id"], status=record["status"], created_at=record["created_at"],
                   finished_at=record["finished_at"], candidates=record["request"]["candidates"],
                   progress=Progress(done=record["done"], total=record["total"]), error=record["error"],
                   request=record["request"])
        if "report" in record:
            made.report = record["report"]
        return made


class EvaluationList(Page[Evaluation]):
    pass
