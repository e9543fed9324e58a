"""`/v1/files`: upload (streamed, capped), list, retrieve, download, check and delete files."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ...errors import InvalidRequest
from ...store.blobs import FileTooLarge
from ...store.files import UPLOAD_PURPOSES
from ..schemas import Deleted, ErrorResponse, FileList, FileObject, FileReport
from ..service import Service
from ..uploads import UploadParser

router = APIRouter(tags=["files"], responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                                               404: {"model": ErrorResponse}})
UPLOAD_OVERHEAD = 64 * 1024  # room for the form's other fields and boundaries beyond the file cap

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "Chat-format JSONL (.jsonl)"},
                   "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)}}}}}}}


def service(request: Request) -> Service:
    return request.app.state.service


@router.post("/files", response_model=FileObject, openapi_extra=UPLOAD_BODY,
             responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def upload_file(request: Request, svc: Service = Depends(service),
                      idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)) -> dict:
    """Upload a training or validation file (purpose `fine-tune`), streamed to disk under a size cap."""
    cap = svc.files.max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + UPLOAD_OVERHEAD:
        raise FileTooLarge(f"the file is larger than the {cap:,}-byte limit", param="file")
    file_id, writer = svc.files.writer()
    with writer:  # anything but a completed upload leaves nothing behind
        parser = UploadParser(request.headers.get("content-type", ""), writer)
        try:
            async for chunk in request.stream():
                parser.feed(chunk)
        except ClientDisconnect:
            raise InvalidRequest("the upload was interrupted before it finished", param="file") from None
        upload = parser.finish()
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise InvalidRequest("missing required parameter 'purpose' (use 'fine-tune')", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"purpose {purpose!r} is not supported; tunelab accepts 'fine-tune'", param="purpose")
        if upload.filename is None:
            raise InvalidRequest("missing required parameter 'file'", param="file")
        if not upload.filename.lower().endswith(".jsonl"):
            raise InvalidRequest(f"fine-tuning files must be JSONL with a .jsonl name; got {upload.filename!r}",
                                 param="file")
        if writer.size == 0:
            raise InvalidRequest("the file is empty", param="file")
        return await run_in_threadpool(svc.files.add, file_id, writer, upload.filename, purpose, idempotency_key)


@router.get("/files", response_model=FileList)
def list_files(purpose: str | None = None, limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc", after: str | None = None,
               svc: Service = Depends(service)) -> dict:
    """Files, newest first; page with `after` (the last id of the previous page)."""
    return svc.files.list(purpose=purpose, limit=limit, order=order, after=after)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, svc: Service = Depends(service)) -> dict:
    return svc.files.get(file_id)


@router.get("/files/{file_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(file_id: str, svc: Service = Depends(service)) -> FileResponse:
    """The file's bytes."""
    meta = svc.files.get(file_id)
    return FileResponse(svc.files.path(file_id), media_type="application/octet-stream", filename=meta["filename"])


@router.get("/files/{file_id}/report", response_model=FileReport, response_model_by_alias=True)
def file_report(file_id: str, model: str | None = Query(None, max_length=256, description="the base model whose "
                                                         "tokenizer counts the tokens (default: TUNELAB_DEFAULT_MODEL)"),
                validation_file: str | None = Query(None, max_length=64, description="a validation file to check "
                                                    "with it (and for overlap)"),
                svc: Service = Depends(service)) -> dict:
    """The pre-flight report of an uploaded training file, as `tunelab data check` prints it: errors by line,
    warnings, token statistics with a histogram, what `auto` resolves to and the estimated training time."""
    return svc.files.report(file_id, validation_file, svc.registry.base_of(model or svc.settings.default_model))


@router.delete("/files/{file_id}", response_model=Deleted)
def delete_file(file_id: str, svc: Service = Depends(service)) -> dict:
    """Delete a file and its bytes; refused while a job that is not finished uses it."""
    return svc.files.delete(file_id)
