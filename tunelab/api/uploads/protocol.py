"""Wire types of `/v1/uploads`, in OpenAI's shape: the upload, its parts, and the create and complete requests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..files.protocol import FileObject


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(ge=0, description="the file's size; the parts listed on complete must add up to it")
    filename: str = Field(max_length=4096, description="a .jsonl name (metadata only, never a path)")
    purpose: str = Field(max_length=64, description="fine-tune")
    mime_type: str = Field(max_length=255, description="e.g. text/jsonl")
    expires_after: dict | None = Field(default=None, description="accepted and ignored: an upload expires an "
                                       "hour after it is created; the file it makes is kept until deleted")


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part_ids: list[str] = Field(max_length=10_000, description="the parts, in the order of the file")
    md5: str | None = Field(default=None, max_length=64, description="the MD5 of the whole file, checked")


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None

    @classmethod
    def of(cls, record: dict) -> "UploadObject":
        file = record.get("file")
        return cls(id=record["id"], bytes=record["bytes"], created_at=record["created_at"],
                   expires_at=record["expires_at"], filename=record["filename"], purpose=record["purpose"],
                   status=record["status"], file=FileObject.of(file) if file else None)


class UploadPart(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
