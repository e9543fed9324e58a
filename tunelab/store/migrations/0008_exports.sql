-- Exports of a model to files other tools load (a PEFT adapter, a merged safetensors model, a GGUF file): the
-- request, its progress while it runs, then the files written or why it failed. The files live under
-- $TUNELAB_HOME/exports/<export id>/.
CREATE TABLE exports (
    id            TEXT PRIMARY KEY,             -- export-<hex>
    model         TEXT NOT NULL,                -- a fine-tuned model, a checkpoint or (gguf only) a base model
    format        TEXT NOT NULL,                -- peft | merged | gguf
    quant         TEXT,                         -- gguf only: f16 | q8_0 | q4_0
    ollama        INTEGER NOT NULL DEFAULT 0,   -- gguf only: a Modelfile beside the GGUF
    system        TEXT,                         -- the Modelfile's SYSTEM line, when given
    status        TEXT NOT NULL,                -- queued | running | succeeded | failed
    progress      REAL NOT NULL DEFAULT 0,      -- 0..1
    stage         TEXT,                         -- what is happening now, for a person
    files         TEXT,                         -- JSON [{"name", "bytes"}], once succeeded
    error_code    TEXT,
    error_message TEXT,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX exports_by_model ON exports (model);
