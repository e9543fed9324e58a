"""`/v1/fine_tuning/jobs`: create, list, retrieve, events, checkpoints, cancel / pause / resume."""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from ..schemas import CheckpointList, ErrorResponse, EventList, FineTuningJob, JobCreate, JobList
from ..service import Service
from .files import service

SETTLE_SECONDS = 30

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})


@router.post("", response_model=FineTuningJob, responses={422: {"model": ErrorResponse}})
def create_job(body: JobCreate, svc: Service = Depends(service),
               idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)) -> dict:
    """Create a fine-tuning job. It starts in `validating_files`; a bad file fails it with the line named."""
    return svc.jobs.create(body, idempotency_key)


@router.get("", response_model=JobList)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
              svc: Service = Depends(service)) -> dict:
    """Jobs, newest first. Filter with `metadata[key]=value`."""
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    return svc.jobs.list(after=after, limit=limit, metadata=metadata)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, svc: Service = Depends(service)) -> dict:
    return svc.jobs.get(job_id)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000),
                svc: Service = Depends(service)) -> dict:
    """Events, newest first: lifecycle messages and a metrics event per training step."""
    return svc.jobs.events(job_id, after=after, limit=limit)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100),
                     svc: Service = Depends(service)) -> dict:
    """Checkpoints (one per epoch, and one per pause), newest first, each deployable by its model id."""
    return svc.jobs.checkpoints(job_id, after=after, limit=limit)


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(job_id: str, svc: Service = Depends(service)) -> dict:
    """Stop the job for good; a running one stops within about a second."""
    return await _act(svc, job_id, "cancel")


@router.post("/{job_id}/pause", response_model=FineTuningJob)
async def pause_job(job_id: str, svc: Service = Depends(service)) -> dict:
    """Pause a running job: it writes a checkpoint (deployable) and stops until resumed."""
    return await _act(svc, job_id, "pause")


@router.post("/{job_id}/resume", response_model=FineTuningJob)
async def resume_job(job_id: str, svc: Service = Depends(service)) -> dict:
    """Continue a paused job from its checkpoint."""
    return await _act(svc, job_id, "resume")


async def _act(svc: Service, job_id: str, action: str) -> dict:
    """Carry out the action; for a running job, wait (without holding a thread) up to SETTLE_SECONDS for the
    worker to stop it, so the answer shows the outcome — `cancelled` or `paused` — as the cloud's does."""
    job = await run_in_threadpool(svc.jobs.act, job_id, action)
    deadline = time.monotonic() + SETTLE_SECONDS
    while job["status"] == "running" and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        job = await run_in_threadpool(svc.jobs.get, job_id)
    return job


@router.delete("/{job_id}")
def delete_job(job_id: str, svc: Service = Depends(service)) -> dict:
    """Remove a finished job with its events, checkpoints and run directory (tunelab's own route). Delete its
    fine-tuned model first; its result file stays a file."""
    return svc.jobs.delete(job_id)
