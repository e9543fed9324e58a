"""Wire types of the stored completions: the stored `chat.completion` (with its metadata, and tunelab's
`request` and `edited_content` beside it), its messages, their cursor pages, the update and the export."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...store.completions import metadata_problem
from ..chat.protocol import ChatCompletion
from ..files.protocol import FileObject
from ..protocol import CursorPage


def _metadata(value):
    problem = metadata_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class StoredCompletion(ChatCompletion):
    """The answer as the client received it. `request` (the messages, the model asked) and `edited_content`
    (the studio's edit, beside the original) are tunelab's; the SDK ignores fields it does not know."""

    metadata: dict[str, str]
    request: dict[str, Any]
    edited_content: str | None = None


class StoredCompletionList(CursorPage[StoredCompletion]):
    pass


class StoredMessage(BaseModel):
    """A message of the request, with its id (`<completion id>-<index>`), as `messages.list` returns it."""

    model_config = ConfigDict(extra="allow")  # tool_calls, tool_call_id …

    id: str
    role: str
    content: str | None = None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class StoredMessageList(CursorPage[StoredMessage]):
    pass


class StoredUpdate(BaseModel):
    """`POST /v1/chat/completions/{id}`: the SDK's `update(id, metadata=…)` replaces the metadata (null empties
    it); tunelab's `edited_content` keeps an edited answer beside the original (null drops the edit)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None = None
    edited_content: str | None = Field(default=None, max_length=1_000_000)

    _check_metadata = field_validator("metadata")(_metadata)


class StoredExport(BaseModel):
    """`POST /v1/stored_completions/export`: which stored completions (every filter given must match) and the
    kind of training file to make of them."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["supervised", "preference"]
    model: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, str] | None = None
    ids: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    created_after: int | None = Field(default=None, ge=0)
    created_before: int | None = Field(default=None, ge=0)
    filename: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"\.jsonl$")

    _check_metadata = field_validator("metadata")(_metadata)


class ExportedFile(FileObject):
    """The training file made, and tunelab's account of it: rows written, completions left out and why."""

    examples: int
    left_out: dict[str, int]
