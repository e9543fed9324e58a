"""Every model the service knows: catalog base models, fine-tuned models (the `models` table) and checkpoints.

    GET /v1/models        # base and fine-tuned models
    DELETE /v1/models/ID  # fine-tuned models only

Fine-tuned model ids follow the cloud: `ft:<base>:<owner>:<suffix>:<id>`, checkpoints add `:ckpt-step-<N>`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequest, ModelNotFound
from ..store.db import Database
from .catalog import list_models


@dataclass
class Located:
    """Where a model's weights are: a catalog base model, plus an adapter (lora) or a whole model (full)."""

    id: str
    base: str
    method: str | None = None
    weights: Path | None = None


@dataclass
class TrainingStart:
    """What a job fine-tunes from: the catalog base model, and the weights of a fine-tuned model if it continues one."""

    base: str
    method: str | None = None  # of the fine-tuned model continued from
    weights: Path | None = None


class Registry:
    def __init__(self, db: Database, owner: str):
        self.db = db
        self.owner = owner

    def list(self) -> list[dict]:
        bases = [base_object(r) for r in list_models()]
        tuned = [_tuned_object(r) for r in self.db.query("SELECT * FROM models ORDER BY created_at, rowid")]
        return bases + tuned

    def get(self, model_id: str) -> dict:
        if not model_id.startswith("ft:"):  # ft: ids are never catalog names; skip reading the catalog for them
            for row in list_models():
                if row["name"] == model_id:
                    return base_object(row)
        rows = self.db.query("SELECT * FROM models WHERE id = ?", (model_id,))
        if rows:
            return _tuned_object(rows[0])
        rows = self.db.query("SELECT c.*, j.request FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
                             "WHERE c.model = ?", (model_id,))
        if rows and Path(rows[0]["path"]).is_dir():
            row = rows[0]
            return {"id": row["model"], "object": "model", "created": row["created_at"], "owned_by": self.owner,
                    "parent": model_id.rsplit(":ckpt-step-", 1)[0], "root": _root_of(model_id), "kind": "checkpoint",
                    "fine_tuning_job_id": row["job_id"]}
        raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    def locate(self, model_id: str) -> Located:
        """What serving `model_id` needs: a base model name, a fine-tuned model or a checkpoint id."""
        found = self.get(model_id)  # raises model_not_found
        if found["kind"] == "base":
            if not found["installed"]:
                raise InvalidRequest(f"the base model {model_id!r} is not installed", param="model")
            return Located(model_id, model_id)
        if found["kind"] == "fine-tuned":
            row = self.db.query("SELECT base, method, path FROM models WHERE id = ?", (model_id,))[0]
            return Located(model_id, row["base"], row["method"], Path(row["path"]))
        row = self.db.query("SELECT c.path, j.request FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
                            "WHERE c.model = ?", (model_id,))[0]
        path = Path(row["path"])
        method = "lora" if (path / "adapter_config.json").is_file() else "full"
        return Located(model_id, json.loads(row["request"])["base"], method, path)

    def base_of(self, model_id: str) -> str:
        """The installed catalog base model behind `model_id` (itself, for a base model): never a path."""
        found = self.get(model_id)  # raises model_not_found
        base = self.get(found["root"]) if found["kind"] != "base" else found
        if not base["installed"]:
            raise InvalidRequest(f"the base model {base['id']!r} is not installed", param="model")
        return base["id"]

    def training_start(self, model_id: str) -> TrainingStart:
        """Check a job's `model` without loading anything: an installed base model or a fine-tuned model."""
        for row in list_models():
            if row["name"] == model_id:
                if not row["installed"]:
                    raise InvalidRequest(f"the base model {model_id!r} is not installed; install it with: "
                                         f"{row['install']}", param="model")
                return TrainingStart(model_id)
        rows = self.db.query("SELECT * FROM models WHERE id = ?", (model_id,))
        if not rows:
            known = ", ".join(m["id"] for m in self.list())
            raise ModelNotFound(f"the model {model_id!r} does not exist; known models: {known}", param="model")
        row = rows[0]
        return TrainingStart(row["base"], row["method"], Path(row["path"]))

    def delete(self, model_id: str) -> dict:
        if any(row["name"] == model_id for row in list_models()):
            raise InvalidRequest(f"{model_id!r} is a base model; only fine-tuned models can be deleted", param="model")
        with self.db.write() as conn:
            row = conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
            users = self._deployments_using(conn, model_id)
            if users:
                raise InvalidRequest(f"the model {model_id!r} is deployed as {users[0]!r}; delete the deployment "
                                     "first", param="model")
            job = conn.execute("SELECT id, status FROM jobs WHERE json_extract(request, '$.model') = ? AND status IN "
                               "('validating_files', 'queued', 'running', 'paused') ORDER BY rowid", (model_id,)).fetchone()
            if job:
                raise InvalidRequest(f"fine-tuning job {job['id']} ({job['status']}) continues from {model_id!r}; "
                                     "cancel it or wait for it to finish first", param="model")
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        shutil.rmtree(row["path"], ignore_errors=True)  # after the commit: the write lock is not held meanwhile
        return {"id": model_id, "object": "model", "deleted": True}

    @staticmethod
    def _deployments_using(conn, model_id: str) -> list[str]:
        """Names of deployments serving `model_id` (none until the service has deployments)."""
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deployments'").fetchone()
        if not has_table:
            return []
        return [r["name"] for r in conn.execute("SELECT name FROM deployments WHERE model = ?", (model_id,))]


def _root_of(model_id: str) -> str:
    return model_id.split(":")[1] if model_id.startswith("ft:") else model_id


def base_object(row: dict) -> dict:
    return {"id": row["name"], "object": "model", "created": row.get("created") or 0, "owned_by": "tunelab",
            "parent": None, "root": row["name"], "kind": "base", "parameters": row["parameters"],
            "installed": row["installed"], "chat_template": row["chat_template"]}


def _tuned_object(row) -> dict:
    return {"id": row["id"], "object": "model", "created": row["created_at"], "owned_by": row["owned_by"],
            "parent": row["parent"], "root": row["base"], "kind": "fine-tuned", "fine_tuning_job_id": row["job_id"]}
