"""Wire types every endpoint group shares: the OpenAI error envelope, the deletion answer, and `Wire`, the base of
objects whose optional fields leave the JSON when they were never set (as the cloud omits them)."""

from __future__ import annotations

from typing import ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, model_serializer


class Wire(BaseModel):
    """A response object; the fields named in `optional` are left out of its JSON unless they were set."""

    optional: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler):
        data = handler(self)
        for name in self.optional - self.model_fields_set:
            data.pop(name, None)
        return data


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A list page, as the cloud pages jobs, events and most lists."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool


class CursorPage(Page[Item], Generic[Item]):
    """A page that also names its first and last ids (files, checkpoints)."""

    first_id: str | None
    last_id: str | None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


# The errors every route may answer with, as /openapi.json lists them.
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
