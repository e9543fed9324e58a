"""`/v1/evaluations`: compare deployments or models on a prompt set (tunelab's own route; the cloud's lab does
this by eye in two chat windows)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidRequest
from ...evaluate.render import html, markdown
from ..schemas import ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(prefix="/evaluations", tags=["evaluations"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})


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
    checks: list[str] | None = Field(default=None, description="registered check names (default: all), and "
                                     "module:name checks of importable modules to add")
    parallel: int = Field(default=1, ge=1, le=8, description="prompts answered at once (each by every candidate); "
                          "above 1 a run is faster and its latency figures are those of a shared engine")


@router.post("", status_code=201)
async def create_evaluation(body: EvaluationCreate, svc: Service = Depends(service)) -> dict:
    """Start a comparison; poll `GET /v1/evaluations/{id}` for its progress and report."""
    return svc.evaluations.create(svc, body.model_dump(exclude_none=False))


@router.get("")
def list_evaluations(limit: int = Query(default=20, ge=1, le=100),
                     job_id: str | None = Query(default=None, description="only the comparison attached to this "
                                                "fine-tuning job"),
                     svc: Service = Depends(service)) -> dict:
    """Newest first; with `job_id`, the comparison made automatically when that job succeeded."""
    return svc.evaluations.list(limit, job_id)


@router.get("/{evaluation_id}")
def get_evaluation(evaluation_id: str, svc: Service = Depends(service)) -> dict:
    return svc.evaluations.get(evaluation_id)


@router.get("/{evaluation_id}/report", responses={200: {"content": {"text/html": {}, "text/markdown": {}}}})
def evaluation_report(evaluation_id: str, format: Literal["json", "markdown", "html"] = "json",
                      svc: Service = Depends(service)):
    """The report of a completed comparison as JSON, Markdown or a self-contained HTML page."""
    found = svc.evaluations.get(evaluation_id)
    if found["report"] is None:
        raise InvalidRequest(f"the evaluation {evaluation_id} is {found['status']}; its report comes when it "
                             "completes", param="evaluation_id")
    if format == "markdown":
        return PlainTextResponse(markdown(found), media_type="text/markdown")
    if format == "html":
        return HTMLResponse(html(found))
    return found["report"]


@router.delete("/{evaluation_id}")
def delete_evaluation(evaluation_id: str, svc: Service = Depends(service)) -> dict:
    return svc.evaluations.delete(evaluation_id)
