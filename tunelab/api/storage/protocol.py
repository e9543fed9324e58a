"""Wire types of `/v1/storage`: what the service holds, by kind, with the bytes each item takes on disk."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class DeploymentHeld(BaseModel):
    name: str
    model: str


class ExportHeld(BaseModel):
    id: str
    model: str
    format: str
    quantization: str | None
    ollama: bool
    status: str
    files: int
    bytes: int


class ModelHeld(BaseModel):
    id: str
    job_id: str | None
    bytes: int


class JobHeld(BaseModel):
    id: str
    status: str
    checkpoints: int
    bytes: int


class FileHeld(BaseModel):
    id: str
    filename: str
    purpose: str
    bytes: int


class EvaluationHeld(BaseModel):
    id: str
    status: str


class StoredCompletionHeld(BaseModel):
    id: str
    model: str


class EvalHeld(BaseModel):
    id: str
    name: str
    runs: int


class BaseModelHeld(BaseModel):
    name: str
    bytes: int


class Storage(BaseModel):
    object: Literal["storage"] = "storage"
    deployments: list[DeploymentHeld]
    exports: list[ExportHeld]
    models: list[ModelHeld]
    jobs: list[JobHeld]
    files: list[FileHeld]
    evaluations: list[EvaluationHeld]
    stored_completions: list[StoredCompletionHeld]
    evals: list[EvalHeld]
    base_models: list[BaseModelHeld]
    removable_bytes: int
    database_bytes: int


class Compaction(BaseModel):
    object: Literal["storage.compaction"] = "storage.compaction"
    database_bytes_before: int
    database_bytes: int
