"""The uploads service: a declared upload, its parts streamed to disk under a cap, then complete or cancel."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from ...errors import InvalidRequest
from ...store.blobs import FileTooLarge
from ...store.uploads import PART_MAX_BYTES, Uploads
from ..multipart import UploadParser
from .protocol import UploadComplete, UploadCreate, UploadObject, UploadPart

PART_OVERHEAD = 64 * 1024  # room for the form's boundaries and headers beyond the part's bytes


@dataclass
class UploadsService:
    uploads: Uploads

    def create(self, body: UploadCreate) -> UploadObject:
        return UploadObject.of(self.uploads.create(body.filename, body.purpose, body.bytes, body.mime_type))

    async def add_part(self, request: Request, upload_id: str) -> UploadPart:
        """Stream one part (the form's `data`) to disk; anything but a whole part leaves nothing behind."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > PART_MAX_BYTES + PART_OVERHEAD:
            raise FileTooLarge(f"a part is at most {PART_MAX_BYTES:,} bytes", param="data")
        part_id, writer = await run_in_threadpool(self.uploads.part_writer, upload_id)
        with writer:
            parser = UploadParser(request.headers.get("content-type", ""), writer, file_field="data",
                                  expected="the part's bytes as 'data'")
            try:
                async for chunk in request.stream():
                    parser.feed(chunk)
            except ClientDisconnect:
                raise InvalidRequest("the part was interrupted before it finished", param="data") from None
            except FileTooLarge:
                raise FileTooLarge(f"the part is larger than {writer.limit:,} bytes (a part's limit is "
                                   f"{PART_MAX_BYTES:,} bytes, and no more than the upload declared)",
                                   param="data") from None
            if parser.finish().filename is None:
                raise InvalidRequest("missing required parameter 'data'", param="data")
            part = await run_in_threadpool(self.uploads.add_part, upload_id, part_id, writer)
        return UploadPart(**part)

    def complete(self, upload_id: str, body: UploadComplete) -> UploadObject:
        return UploadObject.of(self.uploads.complete(upload_id, body.part_ids, body.md5))

    def cancel(self, upload_id: str) -> UploadObject:
        return UploadObject.of(self.uploads.cancel(upload_id))
