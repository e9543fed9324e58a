"""The stored completions service: pages of stored answers and of their messages, updates (metadata, the
studio's edit), deletion, and the export of a selection as a supervised or preference training file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ...data.stored_export import export_rows
from ...errors import InvalidRequest, NotFound
from ...store.completions import CompletionStore
from ...store.files import Files
from ..files.protocol import FileObject
from ..protocol import Deleted
from .protocol import (ExportedFile, StoredCompletion, StoredCompletionList, StoredExport, StoredMessage,
                       StoredMessageList, StoredUpdate)

MAX_EXPORTED = 100_000  # completions one export reads; more must be narrowed by a filter
WHY_NO_PAIRS = ("a preference pair needs, for the same messages, an edited answer, or an answer rated good and "
                "one rated bad (metadata rating: good | bad)")


@dataclass
class StoredCompletionsService:
    completions: CompletionStore
    files: Files

    def list(self, *, model: str | None, metadata: dict[str, str], after: str | None, limit: int,
             order: str) -> StoredCompletionList:
        rows = self.completions.list(model=model, metadata=metadata, after=after, limit=limit + 1, order=order)
        data = [StoredCompletion.model_validate(r) for r in rows[:limit]]
        return StoredCompletionList(data=data, first_id=data[0].id if data else None,
                                    last_id=data[-1].id if data else None, has_more=len(rows) > limit)

    def get(self, completion_id: str) -> StoredCompletion:
        found = self.completions.get(completion_id)
        if found is None:
            raise NotFound(f"no stored chat completion with id {completion_id!r}", param="completion_id")
        return StoredCompletion.model_validate(found)

    def messages(self, completion_id: str, *, after: str | None, limit: int, order: str) -> StoredMessageList:
        messages = self.completions.messages(completion_id)
        if order == "desc":
            messages.reverse()
        if after is not None:
            ids = [m["id"] for m in messages]
            if after not in ids:
                raise InvalidRequest(f"no message {after!r} in {completion_id} to page after", param="after")
            messages = messages[ids.index(after) + 1:]
        data = [StoredMessage.model_validate(m) for m in messages[:limit]]
        return StoredMessageList(data=data, first_id=data[0].id if data else None,
                                 last_id=data[-1].id if data else None, has_more=len(messages) > limit)

    def update(self, completion_id: str, body: StoredUpdate) -> StoredCompletion:
        self.get(completion_id)
        if "metadata" in body.model_fields_set:
            self.completions.update(completion_id, body.metadata)
        if "edited_content" in body.model_fields_set:
            self.completions.edit(completion_id, body.edited_content)
        return self.get(completion_id)

    def delete(self, completion_id: str) -> Deleted:
        self.completions.delete(completion_id)
        return Deleted(id=completion_id, object="chat.completion.deleted", deleted=True)

    def export(self, body: StoredExport) -> ExportedFile:
        """Write the selected completions as a training file (purpose fine-tune); refuse, saying why, when
        nothing would be in it."""
        chosen = self.completions.list(model=body.model, metadata=body.metadata, ids=body.ids,
                                       created_after=body.created_after, created_before=body.created_before,
                                       limit=MAX_EXPORTED + 1)
        if body.ids:  # an id that names nothing is a mistake, not a filter
            known = {c["id"] for c in self.completions.list(ids=body.ids, limit=len(body.ids))}
            missing = [i for i in body.ids if i not in known]
            if missing:
                raise InvalidRequest(f"no stored chat completion {missing[0]!r}" +
                                     (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), param="ids")
        if not chosen:
            raise InvalidRequest("no stored chat completions match the filter; nothing to export", param=None)
        if len(chosen) > MAX_EXPORTED:
            raise InvalidRequest(f"more than {MAX_EXPORTED:,} stored completions match; narrow the filter "
                                 "(model, metadata, created_after/created_before, ids)", param=None)
        exported = export_rows(chosen, body.format)
        if not exported.rows:
            left = ", ".join(f"{n} {why}" for why, n in sorted(exported.left_out.items()))
            reason = f"; {WHY_NO_PAIRS}" if body.format == "preference" else ""
            raise InvalidRequest(f"none of the {len(chosen)} stored chat completions makes a {body.format} "
                                 f"example ({left}){reason}", param="format")
        filename = body.filename or f"stored-{body.format}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        file_id, writer = self.files.writer()
        with writer:
            writer.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in exported.rows).encode())
            record = self.files.add(file_id, writer, filename, "fine-tune")
        return ExportedFile(**FileObject.of(record).model_dump(), examples=len(exported.rows),
                            left_out=exported.left_out)
