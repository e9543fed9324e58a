-- The engine a deployment runs on: local (tunelab's own, in process), llama.cpp or vllm (a server tunelab starts,
-- watches and stops), or url (an engine someone already runs, at engine_url).
ALTER TABLE deployments ADD COLUMN engine TEXT NOT NULL DEFAULT 'local';  -- local | llama.cpp | vllm | url
ALTER TABLE deployments ADD COLUMN engine_url TEXT;                       -- url only: http(s)://host:port
ALTER TABLE deployments ADD COLUMN engine_kind TEXT;                      -- url only: llama.cpp | vllm, or NULL: asked of it
