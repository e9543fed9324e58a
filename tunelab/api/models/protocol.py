"""Wire types of `/v1/models`: the model object (with tunelab's additions, which the SDK tolerates) and its list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class FastPaths(BaseModel):
    """Which of tunelab's fast paths run a base model: the lean LoRA training forward and the decoder."""

    training: bool
    decoding: bool
    note: str | None = None  # the one-line reason a path steps aside (transformers' forward runs the model then)


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None
    # tunelab's additions
    kind: Literal["base", "fine-tuned", "checkpoint"]
    parameters: str | None = None
    installed: bool | None = None
    chat_template: str | None = None  # where the chat template came from: "model" or "tunelab default (…)"
    architecture: str | None = None  # "llama", "qwen2", "gemma3", …
    context_length: int | None = None
    fast_paths: FastPaths | None = None
    fine_tuning_job_id: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
