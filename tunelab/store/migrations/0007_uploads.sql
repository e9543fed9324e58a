-- Uploads in parts (OpenAI's Uploads API): a declared file whose parts arrive one request each, then are
-- assembled into a file on complete. The parts' bytes live under uploads/<upload id>/<part id> until then.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,               -- upload_<hex>
    filename    TEXT NOT NULL,                  -- sanitised, as for files
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,               -- declared; the listed parts must add up to it
    mime_type   TEXT NOT NULL,
    status      TEXT NOT NULL,                  -- pending | completed | cancelled | expired
    file_id     TEXT,                           -- the file made on complete
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE upload_parts (
    id          TEXT PRIMARY KEY,               -- part_<hex>
    upload_id   TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id);
