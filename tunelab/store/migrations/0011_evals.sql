-- Evals as the cloud's evals API shapes them: an eval (what data looks like and the graders that judge it), its
-- runs (a data source run through the graders, in the background) and each run's output items (one per data item:
-- the sample generated or given, and every grader's result).
CREATE TABLE evals (
    id                  TEXT PRIMARY KEY,       -- eval_<hex>
    name                TEXT NOT NULL,
    metadata            TEXT,                   -- JSON object of strings, or null
    data_source_config  TEXT NOT NULL,          -- JSON, as returned (with its schema)
    testing_criteria    TEXT NOT NULL,          -- JSON list of graders, as given
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE TABLE eval_runs (
    id                  TEXT PRIMARY KEY,       -- evalrun_<hex>
    eval_id             TEXT NOT NULL REFERENCES evals (id),
    name                TEXT NOT NULL,
    metadata            TEXT,
    model               TEXT,                   -- the model or deployment that generates samples, if any
    data_source         TEXT NOT NULL,          -- JSON, as given
    status              TEXT NOT NULL,          -- queued | in_progress | completed | failed | canceled
    error_code          TEXT,
    error_message       TEXT,
    report_url          TEXT NOT NULL,
    summary             TEXT NOT NULL,          -- JSON: result_counts, per_testing_criteria_results, per_model_usage
    created_at          INTEGER NOT NULL,
    finished_at         INTEGER
);
CREATE INDEX eval_runs_by_eval ON eval_runs (eval_id);
CREATE TABLE eval_output_items (
    id                  TEXT PRIMARY KEY,       -- outputitem_<hex>
    run_id              TEXT NOT NULL REFERENCES eval_runs (id),
    eval_id             TEXT NOT NULL,
    datasource_item_id  INTEGER NOT NULL,       -- the item's 0-based position in the data source
    status              TEXT NOT NULL,          -- pass | fail | error
    datasource_item     TEXT NOT NULL,          -- JSON
    results             TEXT NOT NULL,          -- JSON list, one per grader
    sample              TEXT NOT NULL,          -- JSON
    created_at          INTEGER NOT NULL
);
CREATE INDEX eval_output_items_by_run ON eval_output_items (run_id, datasource_item_id);
