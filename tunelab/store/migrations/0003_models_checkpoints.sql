-- What a job produces: its result file, its epoch (and pause) checkpoints and, on success, a fine-tuned model.
ALTER TABLE jobs ADD COLUMN result_file TEXT;    -- file-<hex> of results.csv, purpose fine-tune-results
ALTER TABLE jobs ADD COLUMN run_dir TEXT;        -- where the training run writes (checkpoints, adapter)
ALTER TABLE jobs ADD COLUMN output_model TEXT;   -- the fine-tuned model id the job will create, fixed at creation

CREATE TABLE checkpoints (
    id         TEXT PRIMARY KEY,                 -- ftckpt_<hex>
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    model      TEXT NOT NULL UNIQUE,             -- ft:<base>:<owner>:<suffix>:<id>:ckpt-step-<N>
    path       TEXT NOT NULL,                    -- the checkpoint directory (a PEFT adapter for LoRA runs)
    metrics    TEXT NOT NULL,                    -- the step's metrics as JSON
    created_at INTEGER NOT NULL,
    UNIQUE (job_id, step)
);
CREATE INDEX checkpoints_by_job ON checkpoints (job_id, step);

-- Fine-tuned models; base models come from the catalog on disk.
CREATE TABLE models (
    id         TEXT PRIMARY KEY,                 -- ft:<base>:<owner>:<suffix>:<id>
    job_id     TEXT NOT NULL,
    base       TEXT NOT NULL,                    -- the catalog model it was trained from (the root)
    parent     TEXT NOT NULL,                    -- the model the job started from (base or a fine-tuned model)
    method     TEXT NOT NULL,                    -- lora | full
    path       TEXT NOT NULL,                    -- the adapter (lora) or model (full) directory
    owned_by   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
