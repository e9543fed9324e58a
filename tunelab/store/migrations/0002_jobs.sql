-- Fine-tuning jobs: the durable queue. A worker owns a job through a lease (owner, token, expiry) that its
-- heartbeats extend; every worker write names its token, so a worker that lost its lease cannot write.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,      -- ftjob-<hex>
    status           TEXT NOT NULL,         -- validating_files | queued | running | paused | succeeded | failed | cancelled
    request          TEXT NOT NULL,         -- the create request as JSON (model, files, suffix, seed, hyperparameters, ...)
    hyperparameters  TEXT,                  -- resolved numbers as JSON, once training starts
    fine_tuned_model TEXT,
    trained_tokens   INTEGER,
    error            TEXT,                  -- {"code", "message", "param"} as JSON when failed
    estimated_finish INTEGER,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    requested        TEXT,                  -- a cancel or pause asked for while the job runs
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at REAL,
    attempt          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);

-- Events, newest first through the API: seq orders them within a job.
CREATE TABLE job_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,        -- ftevent-<hex>
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    level      TEXT NOT NULL,               -- info | warn | error
    type       TEXT NOT NULL,               -- message | metrics
    message    TEXT NOT NULL,
    data       TEXT                         -- metrics as JSON
);
CREATE INDEX job_events_by_job ON job_events (job_id, seq);
