"""The routes of `/v1/fine_tuning`: jobs (create, list, retrieve, events, checkpoints, cancel / pause / resume,
delete) and the defaults a job gets."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request

from ..protocol import ERRORS, ErrorResponse
from ..services import services
from .protocol import CheckpointList, EventList, FineTuningDefaults, FineTuningJob, JobCreate, JobList
from .service import JobsService

router = APIRouter(prefix="/fine_tuning", tags=["fine-tuning"], responses=ERRORS)


def jobs(request: Request) -> JobsService:
    return services(request).jobs


@router.post("/jobs", response_model=FineTuningJob, responses={422: {"model": ErrorResponse}})
def create_job(body: JobCreate, svc: JobsService = Depends(jobs),
               idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)):
    """Create a fine-tuning job. It starts in `validating_files`; a bad file fails it with the line named."""
    return svc.create(body, idempotency_key)


@router.get("/jobs", response_model=JobList)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100),
              svc: JobsService = Depends(jobs)):
    """Jobs, newest first. Filter with `metadata[key]=value`."""
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    return svc.list(after=after, limit=limit, metadata=metadata)


@router.get("/jobs/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, svc: JobsService = Depends(jobs)):
    return svc.get(job_id)


@router.get("/jobs/{job_id}/events", response_model=EventList)
def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000),
                svc: JobsService = Depends(jobs)):
    """Events, newest first: lifecycle messages and a metrics event per training step."""
    return svc.events(job_id, after=after, limit=limit)


@router.get("/jobs/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100),
                     svc: JobsService = Depends(jobs)):
    """Checkpoints (one per epoch, and one per pause), newest first, each deployable by its model id."""
    return svc.checkpoints(job_id, after=after, limit=limit)


@router.post("/jobs/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(job_id: str, svc: JobsService = Depends(jobs)):
    """Stop the job for good; a running one stops within about a second."""
    return await svc.act(job_id, "cancel")


@router.post("/jobs/{job_id}/pause", response_model=FineTuningJob)
async def pause_job(job_id: str, svc: JobsService = Depends(jobs)):
    """Pause a running job: it writes a checkpoint (deployable) and stops until resumed."""
    return await svc.act(job_id, "pause")


@router.post("/jobs/{job_id}/resume", response_model=FineTuningJob)
async def resume_job(job_id: str, svc: JobsService = Depends(jobs)):
    """Continue a paused job from its checkpoint."""
    return await svc.act(job_id, "resume")


@router.delete("/jobs/{job_id}")
def delete_job(job_id: str, svc: JobsService = Depends(jobs)) -> dict:
    """Remove a finished job with its events, checkpoints and run directory (tunelab's own route). Delete its
    fine-tuned model first; its result file stays a file."""
    return svc.delete(job_id)


@router.get("/defaults", response_model=FineTuningDefaults)
def fine_tuning_defaults(training_file: str | None = Query(None, max_length=64, description="a file id: what "
                                                            "`auto` resolves to for it"),
                         svc: JobsService = Depends(jobs)):
    """The default base model (`TUNELAB_DEFAULT_MODEL`) and each hyperparameter's default, bounds and `auto` rule;
    with `training_file`, the values `auto` resolves to for its valid examples."""
    return svc.defaults(training_file)
