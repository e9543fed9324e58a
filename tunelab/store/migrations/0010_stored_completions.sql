-- Chat completions kept because the request said `store: true`: what the client sent, what it received (a
-- filtered answer as the client got it, without the filtered text), its metadata (a rating is the key `rating`,
-- good or bad) and, beside the original and never over it, an answer edited in the studio.
CREATE TABLE stored_completions (
    id             TEXT PRIMARY KEY,             -- chatcmpl-<hex>, the answer's own id
    model          TEXT NOT NULL,                -- the model or deployment name the request asked for
    created_at     INTEGER NOT NULL,             -- the answer's `created`
    request        TEXT NOT NULL,                -- JSON {"messages", "model", "deployment"?, "tools"?, ...}
    response       TEXT NOT NULL,                -- JSON chat.completion, as the client received it
    metadata       TEXT NOT NULL DEFAULT '{}',   -- JSON {key: value}, at most 16 pairs
    edited_content TEXT,                         -- the studio's edit of the first choice's answer
    edited_at      INTEGER
);
CREATE INDEX stored_completions_by_time ON stored_completions (created_at);
CREATE INDEX stored_completions_by_model ON stored_completions (model, created_at);
