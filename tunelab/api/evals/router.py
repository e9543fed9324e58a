"""The routes of `/v1/evals`, as the SDK's `client.evals`, `client.evals.runs` and
`client.evals.runs.output_items` call them: evals (create, retrieve, update, list, delete), their runs (create,
retrieve, list, cancel, delete) and each run's output items (list, retrieve)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from ..protocol import ERRORS
from ..services import services
from .protocol import (EvalCreate, EvalDeleted, EvalList, EvalObject, EvalUpdate, OutputItemList, OutputItemObject,
                       RunCreate, RunDeleted, RunList, RunObject)
from .service import EvalsService

router = APIRouter(prefix="/evals", tags=["evals"], responses=ERRORS)
Order = Literal["asc", "desc"]


def evals(request: Request) -> EvalsService:
    return services(request).evals


@router.post("", response_model=EvalObject)
def create_eval(body: EvalCreate, svc: EvalsService = Depends(evals)):
    """An eval: the shape of its data (`data_source_config`) and the graders that judge it (`testing_criteria`)."""
    return svc.create(body)


@router.get("", response_model=EvalList)
def list_evals(after: str | None = Query(None, max_length=64), limit: int = Query(20, ge=1, le=100),
               order: Order = "asc", order_by: Literal["created_at", "updated_at"] = "created_at",
               svc: EvalsService = Depends(evals)):
    return svc.list(after=after, limit=limit, order=order, order_by=order_by)


@router.get("/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, svc: EvalsService = Depends(evals)):
    return svc.get(eval_id)


@router.post("/{eval_id}", response_model=EvalObject)
def update_eval(eval_id: str, body: EvalUpdate, svc: EvalsService = Depends(evals)):
    """Rename the eval or replace its metadata."""
    return svc.update(eval_id, body)


@router.delete("/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_id: str, svc: EvalsService = Depends(evals)):
    """The eval with its runs (running ones are canceled first) and their output items."""
    return svc.delete(eval_id)


@router.post("/{eval_id}/runs", response_model=RunObject)
async def create_run(eval_id: str, body: RunCreate, request: Request, svc: EvalsService = Depends(evals)):
    """Start a run in the background (`queued` → `in_progress` → `completed`); poll it, or list its output items."""
    return await svc.create_run(eval_id, body, studio=str(request.base_url))


@router.get("/{eval_id}/runs", response_model=RunList)
def list_runs(eval_id: str, after: str | None = Query(None, max_length=64), limit: int = Query(20, ge=1, le=100),
              order: Order = "asc",
              status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None,
              svc: EvalsService = Depends(evals)):
    return svc.list_runs(eval_id, after=after, limit=limit, order=order, status=status)


@router.get("/{eval_id}/runs/{run_id}", response_model=RunObject)
def retrieve_run(eval_id: str, run_id: str, svc: EvalsService = Depends(evals)):
    return svc.get_run(eval_id, run_id)


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=RunObject)
def cancel_run(eval_id: str, run_id: str, svc: EvalsService = Depends(evals)):
    """Stop a queued or running run; its output items so far stay."""
    return svc.cancel_run(eval_id, run_id)


@router.delete("/{eval_id}/runs/{run_id}", response_model=RunDeleted)
def delete_run(eval_id: str, run_id: str, svc: EvalsService = Depends(evals)):
    return svc.delete_run(eval_id, run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=OutputItemList)
def list_output_items(eval_id: str, run_id: str, after: str | None = Query(None, max_length=64),
                      limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                      status: Literal["pass", "fail", "error"] | None = None, svc: EvalsService = Depends(evals)):
    """In the data source's order; `status` keeps the passed (`pass`), failed (`fail`) or errored (`error`)."""
    return svc.list_items(eval_id, run_id, after=after, limit=limit, order=order, status=status)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItemObject)
def retrieve_output_item(eval_id: str, run_id: str, output_item_id: str, svc: EvalsService = Depends(evals)):
    return svc.get_item(eval_id, run_id, output_item_id)
