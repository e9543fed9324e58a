"""Wire types of `/v1/files`: the file object, its list page and the pre-flight report of a training file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ...train.preflight import PairStats, TokenStats
from ..protocol import CursorPage


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, record: dict) -> "FileObject":
        return cls(id=record["id"], bytes=record["bytes"], created_at=record["created_at"],
                   filename=record["filename"], purpose=record["purpose"], status=record["status"])


class FileList(CursorPage[FileObject]):
    pass


class Problem(BaseModel):
    file: str
    line: int = Field(description="1-based; 0 for the file as a whole")
    rule: str
    message: str


class FileCheck(BaseModel):
    id: str
    filename: str
    file: str
    examples: int
    errors: list[Problem]
    warnings: list[Problem]
    tokens: TokenStats | None
    format: Literal["chat", "preference"] = "chat"
    pairs: PairStats | None = None  # a preference file's prompt and answer lengths


class FileReport(BaseModel):
    """`GET /v1/files/{id}/report`: what `tunelab data check` reports, for uploaded files."""

    object: Literal["file.report"] = "file.report"
    ok: bool
    model: str | None
    files: list[FileCheck]
    n_epochs: int | None
    batch_size: int | None
    billed_tokens: int | None
    estimated_seconds: float | None
    estimate_basis: str | None
