"""The routes of `/v1/pairs`: mine preference pairs from comparisons (and save them), save reviewed pairs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..files.protocol import FileObject
from ..protocol import ERRORS
from ..services import services
from .protocol import PairList, PairsCreate, PairsFileCreate
from .service import PairsService

router = APIRouter(prefix="/pairs", tags=["pairs"], responses=ERRORS)


def pairs(request: Request) -> PairsService:
    found = services(request)
    return PairsService(found.runs, found.store)


@router.post("", response_model=PairList)
def create_pairs(body: PairsCreate, svc: PairsService = Depends(pairs)):
    """Preference pairs from completed comparisons: for each prompt, a failing answer (non-preferred) beside a
    passing one (preferred), with the failed checks and their evidence; `save` also makes them a training file."""
    return svc.create(body)


@router.post("/files", status_code=201, response_model=FileObject)
def save_pairs(body: PairsFileCreate, svc: PairsService = Depends(pairs)):
    """Reviewed preference lines as a training file (purpose fine-tune); a bad line is refused naming it."""
    return svc.save(body)
