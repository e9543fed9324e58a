"""The routes of `/v1/storage`: the disk report and the compaction of the state database."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..protocol import ErrorResponse
from ..services import services
from .protocol import Compaction, Storage
from .service import StorageService

router = APIRouter(prefix="/storage", tags=["storage"], responses={401: {"model": ErrorResponse}})


def storage(request: Request) -> StorageService:
    return services(request).storage


@router.get("", response_model=Storage)
def get_storage(svc: StorageService = Depends(storage)):
    """Deployments, exports, fine-tuned models, jobs (checkpoints and run directories), files, comparisons and
    stored chat completions, with their bytes on disk, in the order `tunelab clean` deletes them; base models
    are listed apart and kept."""
    return svc.report()


@router.post("/compact", response_model=Compaction)
def compact_storage(svc: StorageService = Depends(storage)):
    """Rewrite the state database without the pages deleted items leave behind (after a clean-up: nothing of
    them stays on disk); returns its size before and after."""
    return svc.compact()
