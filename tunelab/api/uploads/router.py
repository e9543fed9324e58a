"""The routes of `/v1/uploads`: create an upload, add its parts (streamed, capped), complete or cancel it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..protocol import ERRORS, ErrorResponse
from ..services import services
from .protocol import UploadComplete, UploadCreate, UploadObject, UploadPart
from .service import UploadsService

router = APIRouter(prefix="/uploads", tags=["uploads"], responses=ERRORS)

PART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "format": "binary", "description": "The part's bytes"}}}}}}}


def uploads(request: Request) -> UploadsService:
    return services(request).uploads


@router.post("", response_model=UploadObject)
def create_upload(body: UploadCreate, svc: UploadsService = Depends(uploads)):
    """Declare a file to be sent in parts: its name, purpose, MIME type and size in bytes. Pending for an hour."""
    return svc.create(body)


@router.post("/{upload_id}/parts", response_model=UploadPart, openapi_extra=PART_BODY,
             responses={413: {"model": ErrorResponse}})
async def add_upload_part(upload_id: str, request: Request, svc: UploadsService = Depends(uploads)):
    """Add a part (at most 64 MB), streamed to disk; parts may arrive in any order."""
    return await svc.add_part(request, upload_id)


@router.post("/{upload_id}/complete", response_model=UploadObject)
def complete_upload(upload_id: str, body: UploadComplete, svc: UploadsService = Depends(uploads)):
    """Assemble the parts in the order of `part_ids` into a file; their sizes must add up to the declared bytes
    (and their MD5 match `md5`, if given), else the upload is cancelled and nothing is kept."""
    return svc.complete(upload_id, body)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, svc: UploadsService = Depends(uploads)):
    """Cancel a pending upload; its parts are discarded."""
    return svc.cancel(upload_id)
