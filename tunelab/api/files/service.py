"""The files service: uploads streamed to disk under a cap, pages of files, the pre-flight report of a training
file, and deletion unless an unfinished job still reads the file."""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from ...config import Settings
from ...errors import InvalidRequest
from ...jobs.queue import Queue
from ...models.registry import Registry
from ...store.blobs import FileTooLarge
from ...store.db import Database
from ...store.files import Files, check_new_file
from ...train.preflight import preflight
from ..multipart import UploadParser
from .protocol import FileList, FileObject, FileReport

UPLOAD_OVERHEAD = 64 * 1024  # room for the form's other fields and boundaries beyond the file cap


@dataclass
class FilesService:
    db: Database
    files: Files
    queue: Queue
    registry: Registry
    settings: Settings

    async def upload(self, request: Request, idempotency_key: str | None) -> FileObject:
        """Stream a multipart upload into a new file; anything but a completed upload leaves nothing behind."""
        cap = self.files.max_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap + UPLOAD_OVERHEAD:
            raise FileTooLarge(f"the file is larger than the {cap:,}-byte limit", param="file")
        file_id, writer = self.files.writer()
        with writer:
            parser = UploadParser(request.headers.get("content-type", ""), writer)
            try:
                async for chunk in request.stream():
                    parser.feed(chunk)
            except ClientDisconnect:
                raise InvalidRequest("the upload was interrupted before it finished", param="file") from None
            upload = parser.finish()
            check_new_file(upload.fields.get("purpose"), upload.filename, writer.size)
            record = await run_in_threadpool(self.files.add, file_id, writer, upload.filename,
                                             upload.fields["purpose"], idempotency_key)
        return FileObject.of(record)

    def list(self, *, purpose: str | None, limit: int, order: str, after: str | None) -> FileList:
        records, more = self.files.list(purpose=purpose, limit=limit, order=order, after=after)
        data = [FileObject.of(r) for r in records]
        return FileList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                        has_more=more)

    def get(self, file_id: str) -> FileObject:
        return FileObject.of(self.files.get(file_id))

    def content(self, file_id: str) -> tuple[Path, str]:
        """Where the file's bytes are, and its name."""
        return self.files.path(file_id), self.files.get(file_id)["filename"]

    def report(self, file_id: str, validation_id: str | None, model: str | None) -> FileReport:
        """The pre-flight report (`tunelab data check`) of uploaded files, naming them by id and filename."""
        base = self.registry.base_of(model or self.settings.default_model)
        found = [self.files.training_data(file_id, "file_id")]
        if validation_id:
            found.append(self.files.training_data(validation_id, "validation_file"))
        names = [f"{f['id']} ({f['filename']})" for f in found]
        report = preflight(self.files.path(file_id), self.files.path(validation_id) if validation_id else None,
                           base, names=(names[0], names[1] if validation_id else None)).to_dict()
        for entry, meta in zip(report["files"], found):
            entry["id"], entry["filename"] = meta["id"], meta["filename"]
        return FileReport(**report)

    def delete(self, file_id: str) -> dict:
        """Delete a file and its bytes; refused while a job that is not finished reads it."""
        with self.db.write() as conn:
            self.files.get(file_id, conn)
            job = self.queue.active_job_using_file(conn, file_id)
            if job:
                raise InvalidRequest(f"file {file_id} is used by fine-tuning job {job['id']} ({job['status']}); "
                                     "cancel the job or wait for it to finish first", param="file_id")
            self.files.delete(file_id, conn)
        return {"id": file_id, "object": "file", "deleted": True}
