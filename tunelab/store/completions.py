"""Stored chat completions: the answers a client asked to keep (`store: true`), with their request and metadata.

A stored completion is the `chat.completion` object exactly as the client received it (a filtered answer without
its text, as it went out), plus `metadata` (the cloud's: at most 16 pairs, keys ≤ 64 characters, string values ≤
512), the `request` it answered (`messages`, `model`, and `deployment`, `tools` … where set) and, where the studio
edited the answer, `edited_content` beside the original, which is never overwritten. A rating is the metadata key
`rating` with the value `good` or `bad`, so the SDK's `update(metadata=…)` rates and a list filter finds ratings.

Lists page as the cloud's do: by time (`created`, then the order of storing), oldest first unless `order="desc"`,
`after` the id of the last item of the previous page. The service has one owner (every key of it sees the same
files, jobs and models), and so sees the same stored completions. This module owns the `stored_completions`
table; records come back as plain dicts, which the API shapes.
"""

from __future__ import annotations

import json
import time

from ..errors import InvalidRequest, NotFound
from .db import Database

MAX_METADATA_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
RATING = "rating"
RATINGS = ("good", "bad")


def check_metadata(metadata, param: str = "metadata") -> dict[str, str]:
    """The cloud's metadata rules: a map of at most 16 string pairs, keys ≤ 64 chars, values ≤ 512; None is {}."""
    problem = metadata_problem(metadata)
    if problem:
        raise InvalidRequest(f"{param}: {problem}", param=param)
    return dict(metadata or {})


def metadata_problem(metadata) -> str | None:
    """What breaks the metadata rules, for a person, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "must be an object of string keys and string values"
    if len(metadata) > MAX_METADATA_PAIRS:
        return f"{len(metadata)} keys; at most {MAX_METADATA_PAIRS} are allowed"
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"keys and values must be strings (got {value!r} for {key!r})"
        if len(key) > MAX_KEY_CHARS:
            return f"the key {key[:20]!r}… has {len(key)} characters; at most {MAX_KEY_CHARS} are allowed"
        if len(value) > MAX_VALUE_CHARS:
            return f"the value of {key!r} has {len(value)} characters; at most {MAX_VALUE_CHARS} are allowed"
    return None


class CompletionStore:
    def __init__(self, db: Database):
        self.db = db

    def add(self, response: dict, request: dict, metadata: dict[str, str] | None = None) -> None:
        """Keep one answer: `response` the chat.completion the client received, `request` what it answered."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO stored_completions (id, model, created_at, request, response, metadata) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (response["id"], response["model"], int(response["created"]), json.dumps(request),
                          json.dumps(response), json.dumps(check_metadata(metadata))))

    def get(self, completion_id: str) -> dict | None:
        """The stored completion (the chat.completion with `metadata`, `request` and `edited_content`), or None."""
        rows = self.db.query("SELECT * FROM stored_completions WHERE id = ?", (completion_id,))
        return _record(rows[0]) if rows else None

    def list(self, *, model: str | None = None, metadata: dict[str, str] | None = None, after: str | None = None,
             limit: int = 20, order: str = "asc", created_after: int | None = None,
             created_before: int | None = None, ids: list[str] | None = None) -> list[dict]:
        """Stored completions by time, filtered: `model` the name the request asked for, every `metadata` pair
        matching, `created_after`/`created_before` unix times (both inclusive), `ids` among these ids. At most
        `limit` (ask one more to learn whether another page follows); `after` is the last id of the previous page."""
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', not {order!r}", param="order")
        where, params = [], []
        if model is not None:
            where.append("model = ?")
            params.append(model)
        for key, value in check_metadata(metadata).items():
            where.append("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)")
            params += [key, value]
        if created_after is not None:
            where.append("created_at >= ?")
            params.append(int(created_after))
        if created_before is not None:
            where.append("created_at <= ?")
            params.append(int(created_before))
        if ids is not None:
            where.append(f"id IN ({', '.join('?' * len(ids))})" if ids else "0")
            params += list(ids)
        if after:
            cursor = self.db.query("SELECT created_at, rowid FROM stored_completions WHERE id = ?", (after,))
            if not cursor:
                raise InvalidRequest(f"no stored completion {after!r} to page after", param="after")
            where.append("(created_at, rowid) > (?, ?)" if order == "asc" else "(created_at, rowid) < (?, ?)")
            params += [cursor[0]["created_at"], cursor[0]["rowid"]]
        direction = "ASC" if order == "asc" else "DESC"
        rows = self.db.query(f"SELECT * FROM stored_completions {'WHERE ' + ' AND '.join(where) if where else ''} "
                             f"ORDER BY created_at {direction}, rowid {direction} LIMIT ?", (*params, int(limit)))
        return [_record(r) for r in rows]

    def messages(self, completion_id: str) -> list[dict]:
        """The request's messages, each with its id (`<completion id>-<index>`), as the cloud lists them; text
        parts are joined into `content` and kept as they came in `content_parts`."""
        found = self.get(completion_id)
        if found is None:
            raise _not_found(completion_id)
        listed = []
        for i, message in enumerate(found["request"]["messages"]):
            content = message.get("content")
            parts = content if isinstance(content, list) else None
            text = "".join(p.get("text", "") for p in parts) if parts is not None else content
            listed.append({**message, "id": f"{completion_id}-{i}", "content": text, "content_parts": parts,
                           "name": message.get("name")})
        return listed

    def update(self, completion_id: str, metadata: dict[str, str] | None) -> dict:
        """Set the completion's metadata (replacing it whole, as the cloud does; None empties it)."""
        metadata = check_metadata(metadata)
        with self.db.write() as conn:
            if not conn.execute("UPDATE stored_completions SET metadata = ? WHERE id = ?",
                                (json.dumps(metadata), completion_id)).rowcount:
                raise _not_found(completion_id)
        return self.get(completion_id)

    def edit(self, completion_id: str, content: str | None) -> dict:
        """Keep `content` as the edited answer beside the original (None drops the edit)."""
        if content is not None and not isinstance(content, str):
            raise InvalidRequest("edited_content must be a string or null", param="edited_content")
        with self.db.write() as conn:
            if not conn.execute("UPDATE stored_completions SET edited_content = ?, edited_at = ? WHERE id = ?",
                                (content, None if content is None else int(time.time()), completion_id)).rowcount:
                raise _not_found(completion_id)
        return self.get(completion_id)

    def delete(self, completion_id: str) -> None:
        with self.db.write() as conn:
            if not conn.execute("DELETE FROM stored_completions WHERE id = ?", (completion_id,)).rowcount:
                raise _not_found(completion_id)

    def count(self) -> int:
        return self.db.query("SELECT COUNT(*) AS n FROM stored_completions")[0]["n"]


def _record(row) -> dict:
    return {**json.loads(row["response"]), "metadata": json.loads(row["metadata"]),
            "request": json.loads(row["request"]), "edited_content": row["edited_content"]}


def _not_found(completion_id: str) -> NotFound:
    return NotFound(f"no stored chat completion with id {completion_id!r}", param="completion_id")
