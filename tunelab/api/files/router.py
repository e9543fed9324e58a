"""The routes of `/v1/files`: upload (streamed, capped), list, retrieve, download, check and delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse

from ..protocol import ERRORS, Deleted, ErrorResponse
from ..services import services
from ...store.files import UPLOAD_PURPOSES
from .protocol import FileList, FileObject, FileReport
from .service import FilesService

router = APIRouter(tags=["files"], responses=ERRORS)

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "Chat-format JSONL (.jsonl)"},
                   "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)}}}}}}}


def files(request: Request) -> FilesService:
    return services(request).files


@router.post("/files", response_model=FileObject, openapi_extra=UPLOAD_BODY,
             responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def upload_file(request: Request, svc: FilesService = Depends(files),
                      idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)):
    """Upload a training or validation file (purpose `fine-tune`), streamed to disk under a size cap."""
    return await svc.upload(request, idempotency_key)


@router.get("/files", response_model=FileList)
def list_files(purpose: str | None = None, limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc", after: str | None = None,
               svc: FilesService = Depends(files)):
    """Files, newest first; page with `after` (the last id of the previous page)."""
    return svc.list(purpose=purpose, limit=limit, order=order, after=after)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, svc: FilesService = Depends(files)):
    return svc.get(file_id)


@router.get("/files/{file_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(file_id: str, svc: FilesService = Depends(files)) -> FileResponse:
    """The file's bytes."""
    path, filename = svc.content(file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.get("/files/{file_id}/report", response_model=FileReport)
def file_report(file_id: str, model: str | None = Query(None, max_length=256, description="the base model whose "
                                                         "tokenizer counts the tokens (default: TUNELAB_DEFAULT_MODEL)"),
                validation_file: str | None = Query(None, max_length=64, description="a validation file to check "
                                                    "with it (and for overlap)"),
                svc: FilesService = Depends(files)):
    """The pre-flight report of an uploaded training file, as `tunelab data check` prints it: errors by line,
    warnings, token statistics with a histogram, what `auto` resolves to and the estimated training time."""
    return svc.report(file_id, validation_file, model)


@router.delete("/files/{file_id}", response_model=Deleted)
def delete_file(file_id: str, svc: FilesService = Depends(files)):
    """Delete a file and its bytes; refused while a job that is not finished uses it."""
    return svc.delete(file_id)
