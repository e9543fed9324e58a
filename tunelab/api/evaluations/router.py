"""The routes of `/v1/evaluations`: start a comparison, follow it, read its report (JSON, Markdown or HTML),
delete it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from ..protocol import ERRORS
from ..services import services
from .protocol import Evaluation, EvaluationCreate, EvaluationList
from .service import EvaluationsService

router = APIRouter(prefix="/evaluations", tags=["evaluations"], responses=ERRORS)


def evaluations(request: Request) -> EvaluationsService:
    return services(request).evaluations


@router.post("", status_code=201, response_model=Evaluation)
async def create_evaluation(body: EvaluationCreate, svc: EvaluationsService = Depends(evaluations)):
    """Start a comparison; poll `GET /v1/evaluations/{id}` for its progress and report."""
    return svc.create(body)


@router.get("", response_model=EvaluationList)
def list_evaluations(limit: int = Query(default=20, ge=1, le=100),
                     job_id: str | None = Query(default=None, description="only the comparison attached to this "
                                                "fine-tuning job"),
                     svc: EvaluationsService = Depends(evaluations)):
    """Newest first; with `job_id`, the comparison made automatically when that job succeeded."""
    return svc.list(limit, job_id)


@router.get("/{evaluation_id}", response_model=Evaluation)
def get_evaluation(evaluation_id: str, svc: EvaluationsService = Depends(evaluations)):
    return svc.get(evaluation_id)


@router.get("/{evaluation_id}/report", responses={200: {"content": {"text/html": {}, "text/markdown": {}}}})
def evaluation_report(evaluation_id: str, format: Literal["json", "markdown", "html"] = "json",
                      svc: EvaluationsService = Depends(evaluations)):
    """The report of a completed comparison as JSON, Markdown or a self-contained HTML page."""
    report = svc.report(evaluation_id, format)
    if format == "markdown":
        return PlainTextResponse(report, media_type="text/markdown")
    if format == "html":
        return HTMLResponse(report)
    return report


@router.delete("/{evaluation_id}")
def delete_evaluation(evaluation_id: str, svc: EvaluationsService = Depends(evaluations)) -> dict:
    return svc.delete(evaluation_id)
