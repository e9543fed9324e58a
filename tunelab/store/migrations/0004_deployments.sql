-- Deployments: a named endpoint for a model (base, fine-tuned or checkpoint), with its token-rate limit and
-- content filter policy, in Azure's shape.
CREATE TABLE deployments (
    name        TEXT PRIMARY KEY,
    model       TEXT NOT NULL,                  -- a model id: base, ft:…, or ft:…:ckpt-step-N
    sku_name    TEXT NOT NULL,                  -- Standard
    capacity    INTEGER NOT NULL,               -- thousands of tokens per minute
    rai_policy  TEXT,                           -- content filter policy name, or NULL for none
    state       TEXT NOT NULL,                  -- Creating | Succeeded | Failed
    error       TEXT,                           -- why provisioning failed
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
