"""`/v1/storage`: what the service holds and the disk it takes, for clean-up (tunelab's own route)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...store.usage import usage
from ..schemas import ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(prefix="/storage", tags=["storage"], responses={401: {"model": ErrorResponse}})


@router.get("")
def get_storage(svc: Service = Depends(service)) -> dict:
    """Deployments, fine-tuned models, jobs (checkpoints and run directories), files and comparisons, with their
    bytes on disk, in the order `tunelab clean` deletes them; base models are listed apart and kept."""
    return usage(svc.db, svc.settings.models_dir)


@router.post("/compact")
def compact_storage(svc: Service = Depends(service)) -> dict:
    """Rewrite the state database without the pages deleted items leave behind (after a clean-up: nothing of
    them stays on disk); returns its size before and after."""
    before = svc.db.bytes()
    return {"object": "storage.compaction", "database_bytes_before": before, "database_bytes": svc.db.compact()}
