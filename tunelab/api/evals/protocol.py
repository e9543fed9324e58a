"""Wire types of `/v1/evals`: the create and update requests, the eval, the run and the output item objects as
the SDK's `client.evals` types read them (`openai.types.evals`).

The data source config, the graders and the run's data source are checked field by field in the service (errors
name e.g. `testing_criteria[1].type` or `data_source.source.content[3].item`), so they arrive here as objects.
A run's `per_testing_criteria_results` carry, besides the cloud's counts, `errored`, `not_applicable` and
`pass_rate` (the share of passes over the items the grader passed or failed, with its 95% Wilson interval and n).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import CursorPage, Wire


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=256)
    data_source_config: dict[str, Any]
    testing_criteria: list[Any] = Field(min_length=1, max_length=64)
    metadata: dict[str, Any] | None = None


class EvalUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = None


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=256)
    data_source: dict[str, Any]
    metadata: dict[str, Any] | None = None


class EvalObject(Wire):
    id: str
    object: Literal["eval"] = "eval"
    name: str
    created_at: int
    metadata: dict[str, str] | None
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]

    @classmethod
    def of(cls, record: dict) -> "EvalObject":
        return cls(id=record["id"], name=record["name"], created_at=record["created_at"],
                   metadata=record["metadata"], data_source_config=record["data_source_config"],
                   testing_criteria=record["testing_criteria"])


class ApiError(BaseModel):
    code: str
    message: str


class ResultCounts(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class RunObject(Wire):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    model: str
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    created_at: int
    error: ApiError | None
    report_url: str
    result_counts: ResultCounts
    per_testing_criteria_results: list[dict[str, Any]]
    per_model_usage: list[dict[str, Any]]

    @classmethod
    def of(cls, record: dict) -> "RunObject":
        summary = record["summary"]
        error = ApiError(code=record["error_code"], message=record["error_message"]) if record["error_code"] else None
        return cls(id=record["id"], eval_id=record["eval_id"], name=record["name"], status=record["status"],
                   model=record["model"] or "", data_source=record["data_source"], metadata=record["metadata"],
                   created_at=record["created_at"], error=error, report_url=record["report_url"],
                   result_counts=ResultCounts(**summary["result_counts"]),
                   per_testing_criteria_results=summary["per_testing_criteria_results"],
                   per_model_usage=summary["per_model_usage"])


class OutputItemObject(Wire):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    run_id: str
    eval_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]

    @classmethod
    def of(cls, record: dict) -> "OutputItemObject":
        return cls(**{k: record[k] for k in ("id", "run_id", "eval_id", "created_at", "status", "datasource_item_id",
                                             "datasource_item", "results", "sample")})


class EvalList(CursorPage[EvalObject]):
    pass


class RunList(CursorPage[RunObject]):
    pass


class OutputItemList(CursorPage[OutputItemObject]):
    pass


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool
    eval_id: str


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool
    run_id: str
