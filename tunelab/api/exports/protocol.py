"""Wire types of `/v1/exports`: the create request and the export object with its progress, files and error."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...export import FORMATS, QUANTS
from ..protocol import CursorPage


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, description="a fine-tuned model (ft:…), one of its checkpoints "
                       "(ft:…:ckpt-step-N) or, for gguf only, a base model")
    format: Literal[FORMATS] = Field(description="peft: the LoRA adapter with its tokenizer; merged: a safetensors "
                                     "model with the adapter merged in; gguf: one GGUF file for llama.cpp and Ollama; "
                                     "gguf-lora: the LoRA adapter alone as a llama.cpp LoRA GGUF (--lora), applied "
                                     "to the base model's gguf export")
    quantization: Literal[QUANTS] | None = Field(default=None, description="gguf only: the weights' precision "
                                                 "(default f16)")
    ollama: bool = Field(default=False, description="gguf only: write an Ollama Modelfile beside the GGUF")
    system: str | None = Field(default=None, max_length=20_000, description="with ollama: the Modelfile's SYSTEM "
                               "message (default: the training data's, when all its conversations share one)")


class ExportedFile(BaseModel):
    name: str = Field(description="relative to the export; download it from /v1/exports/{id}/files/{name}")
    bytes: int


class ExportError(BaseModel):
    code: str
    message: str


class ExportObject(BaseModel):
    id: str
    object: Literal["export"] = "export"
    model: str
    format: Literal[FORMATS]
    quantization: str | None = Field(description="gguf only")
    ollama: bool
    system: str | None
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1)
    stage: str | None = Field(description="what is happening now, for a person")
    files: list[ExportedFile] = Field(description="once succeeded")
    bytes: int = Field(description="the files' total size")
    error: ExportError | None
    created_at: int
    finished_at: int | None

    @classmethod
    def of(cls, record: dict) -> "ExportObject":
        error = ExportError(code=record["error_code"], message=record["error_message"]) \
            if record["status"] == "failed" else None
        return cls(id=record["id"], model=record["model"], format=record["format"], quantization=record["quant"],
                   ollama=record["ollama"], system=record["system"], status=record["status"],
                   progress=record["progress"], stage=record["stage"], files=record["files"],
                   bytes=sum(f["bytes"] for f in record["files"]), error=error, created_at=record["created_at"],
                   finished_at=record["finished_at"])


class ExportList(CursorPage[ExportObject]):
    pass
