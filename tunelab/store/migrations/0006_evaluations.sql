-- Comparisons of candidates (deployments or models) on a prompt set: the request, progress and the report.
CREATE TABLE evaluations (
    id          TEXT PRIMARY KEY,               -- eval-<hex>
    status      TEXT NOT NULL,                  -- running | completed | failed
    request     TEXT NOT NULL,                  -- the create request as JSON, with the files it resolved
    done        INTEGER NOT NULL DEFAULT 0,     -- answers (and validation losses) finished
    total       INTEGER NOT NULL,
    report      TEXT,                           -- the report as JSON, once completed
    error       TEXT,                           -- why it failed
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
