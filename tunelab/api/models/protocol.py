"""Wire types of `/v1/models`: the model object (with tunelab's additions, which the SDK tolerates) and its list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


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
    chat_template: str | None = None
    fine_tuning_job_id: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
