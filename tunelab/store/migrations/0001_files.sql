-- Uploaded and produced files. The bytes live on disk under files/<id>; the name is metadata only.
CREATE TABLE files (
    id          TEXT PRIMARY KEY,           -- file-<hex>
    filename    TEXT NOT NULL,              -- as the client sent it, sanitised; never used as a path
    purpose     TEXT NOT NULL,              -- fine-tune | fine-tune-results
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'processed',
    created_at  INTEGER NOT NULL
);
CREATE INDEX files_by_created ON files (created_at, id);

-- Replays for retried creates: the same Idempotency-Key on the same route returns the same object.
CREATE TABLE idempotency_keys (
    route        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,             -- a different body under the same key is refused
    object_id    TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (route, key)
);
