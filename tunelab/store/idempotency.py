"""Idempotency keys: a retried create with the same `Idempotency-Key` returns the object the first one made.

The key is recorded in the same transaction that creates the object, so of two concurrent identical requests
exactly one creates it; a different request under a used key is refused rather than silently answered.
"""

from __future__ import annotations

import time

from ..errors import TunelabError


class IdempotencyMismatch(TunelabError):
    code = "idempotency_key_reused"
    status = 422


def remember(conn, route: str, key: str, fingerprint: str, object_id: str) -> str:
    """Inside a write transaction: record `key` for `object_id`, or return the id the key already names."""
    row = conn.execute("SELECT request_hash, object_id FROM idempotency_keys WHERE route = ? AND key = ?",
                       (route, key)).fetchone()
    if row is None:
        conn.execute("INSERT INTO idempotency_keys (route, key, request_hash, object_id, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", (route, key, fingerprint, object_id, int(time.time())))
        return object_id
    if row["request_hash"] != fingerprint:
        raise IdempotencyMismatch(f"the Idempotency-Key {key!r} was already used for a different request",
                                  param="Idempotency-Key")
    return row["object_id"]


def forget(conn, object_id: str) -> None:
    """Inside a write transaction: a deleted object's keys go with it (a replay then creates anew)."""
    conn.execute("DELETE FROM idempotency_keys WHERE object_id = ?", (object_id,))
