"""The routes of `/v1/exports`: start an export, follow it, download its files, delete it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse

from ..protocol import ERRORS, Deleted
from ..services import services
from .protocol import ExportCreate, ExportList, ExportObject
from .service import ExportsService

router = APIRouter(prefix="/exports", tags=["exports"], responses=ERRORS)


def exports(request: Request) -> ExportsService:
    return services(request).exports


@router.post("", response_model=ExportObject)
def create_export(body: ExportCreate, svc: ExportsService = Depends(exports)):
    """Start an export (one runs at a time; others wait in order); poll `GET /v1/exports/{id}` for its progress
    and, once it has succeeded, its files."""
    return svc.create(body)


@router.get("", response_model=ExportList)
def list_exports(limit: int = Query(20, ge=1, le=100), after: str | None = Query(None, max_length=64),
                 model: str | None = Query(None, max_length=256, description="only the exports of this model"),
                 svc: ExportsService = Depends(exports)):
    """Exports, newest first; page with `after` (the last id of the previous page)."""
    return svc.list(limit=limit, after=after, model=model)


@router.get("/{export_id}", response_model=ExportObject)
def retrieve_export(export_id: str, svc: ExportsService = Depends(exports)):
    return svc.get(export_id)


@router.get("/{export_id}/files/{name:path}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def export_file(export_id: str, name: str = Path(description="a name the export lists in `files`"),
                svc: ExportsService = Depends(exports)) -> FileResponse:
    """One file of a succeeded export, streamed."""
    path = svc.file(export_id, name)
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


@router.delete("/{export_id}", response_model=Deleted)
def delete_export(export_id: str, svc: ExportsService = Depends(exports)):
    """Delete a finished export and its files."""
    return svc.delete(export_id)
