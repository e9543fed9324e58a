"""Every model the service knows: catalog base models, fine-tuned models (the `models` table) and checkpoints.

    GET /v1/models        # base and fine-tuned models
    DELETE /v1/models/ID  # fine-tuned models only

Fine-tuned model ids follow the cloud: `ft:<base>:<owner>:<suffix>:<id>`, checkpoints add `:ckpt-step-<N>`.
This module owns the `models` and `checkpoints` tables. Records come back as plain dicts; the API shapes them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequest, ModelNotFound
from ..store.blobs import new_id
from ..store.db import Database
from .catalog import list_models
from .load import check_adapter_dir


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
        bases = [base_record(r) for r in list_models()]
        tuned = [_tuned_record(r) for r in self.db.query("SELECT * FROM models ORDER BY created_at, rowid")]
        return bases + tuned

    def get(self, model_id: str) -> dict:
        if not model_id.startswith("ft:"):  # ft: ids are never catalog names; skip reading the catalog for them
            for row in list_models():
                if row["name"] == model_id:
                    return base_record(row)
        rows = self.db.query("SELECT * FROM models WHERE id = ?", (model_id,))
        if rows:
            return _tuned_record(rows[0])
        rows = self.db.query("SELECT c.*, j.request FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
                             "WHERE c.model = ?", (model_id,))
        if rows and Path(rows[0]["path"]).is_dir():
            row = rows[0]
            return {"id": row["model"], "created": row["created_at"], "owned_by": self.owner,
                    "parent": model_id.rsplit(":ckpt-step-", 1)[0], "root": _root_of(model_id), "kind": "checkpoint",
                    "fine_tuning_job_id": row["job_id"]}
        raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")

    def locate(self, model_id: str) -> Located:
        """What serving `model_id` needs: a base model name, a fine-tuned model or a checkpoint id. An adapter
        whose weights are not safetensors is refused here, before anything reads it."""
        found = self.get(model_id)  # raises model_not_found
        if found["kind"] == "base":
            if not found["installed"]:
                raise InvalidRequest(f"the base model {model_id!r} is not installed", param="model")
            return Located(model_id, model_id)
        if found["kind"] == "fine-tuned":
            row = self.db.query("SELECT base, method, path FROM models WHERE id = ?", (model_id,))[0]
            located = Located(model_id, row["base"], row["method"], Path(row["path"]))
        else:
            row = self.db.query("SELECT c.path, j.request FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
                                "WHERE c.model = ?", (model_id,))[0]
            path = Path(row["path"])
            method = "lora" if (path / "adapter_config.json").is_file() else "full"
            located = Located(model_id, json.loads(row["request"])["base"], method, path)
        if located.method == "lora":
            check_adapter_dir(located.weights)
        return located

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

    def is_base(self, model_id: str) -> bool:
        return any(row["name"] == model_id for row in list_models())

    def fine_tuned(self, model_id: str, conn=None):
        """The fine-tuned model's row, or None."""
        return (conn or self.db.connection()).execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()

    def model_of_job(self, conn, job_id: str):
        return conn.execute("SELECT id FROM models WHERE job_id = ?", (job_id,)).fetchone()

    def add_fine_tuned(self, conn, model_id: str, *, job_id: str, base: str, parent: str, method: str, path: Path,
                       owned_by: str) -> None:
        """Inside the job's closing transaction: the model its training produced."""
        conn.execute("INSERT INTO models (id, job_id, base, parent, method, path, owned_by, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (model_id, job_id, base, parent, method, str(path), owned_by, int(time.time())))

    def delete(self, conn, model_id: str) -> Path:
        """Inside the caller's write transaction: forget the fine-tuned model; returns the weights to remove once
        the transaction has committed. Whether something still uses the model is the caller's rule."""
        row = self.fine_tuned(model_id, conn)
        if row is None:
            raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
        conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return Path(row["path"])

    @staticmethod
    def remove_weights(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # --- checkpoints ------------------------------------------------------------------------------------------

    def add_checkpoint(self, conn, job_id: str, step: int, model: str, path: Path, metrics: dict) -> None:
        """Record a checkpoint (replacing one of the same step) and forget those whose directory the recipe pruned."""
        conn.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step))
        conn.execute("INSERT INTO checkpoints (id, job_id, step, model, path, metrics, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (new_id("ftckpt").replace("-", "_"), job_id, step, model, str(path), json.dumps(metrics),
                      int(time.time())))
        for row in conn.execute("SELECT id, path FROM checkpoints WHERE job_id = ?", (job_id,)):
            if not Path(row["path"]).is_dir():
                conn.execute("DELETE FROM checkpoints WHERE id = ?", (row["id"],))

    def checkpoints(self, job_id: str, *, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """The job's checkpoints, latest step first, after the checkpoint `after`, and whether more follow."""
        where, params = "job_id = ?", [job_id]
        if after:
            rows = self.db.query("SELECT step FROM checkpoints WHERE id = ? AND job_id = ?", (after, job_id))
            if not rows:
                raise InvalidRequest(f"no checkpoint {after!r} in job {job_id} to page after", param="after")
            where += " AND step < ?"
            params.append(rows[0]["step"])
        rows = self.db.query(f"SELECT * FROM checkpoints WHERE {where} ORDER BY step DESC LIMIT ?",
                             (*params, limit + 1))
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows[:limit]], len(rows) > limit

    def latest_checkpoint(self, job_id: str) -> str | None:
        rows = self.db.query("SELECT model FROM checkpoints WHERE job_id = ? ORDER BY step DESC LIMIT 1", (job_id,))
        return rows[0]["model"] if rows else None

    def checkpoint_models(self, conn, job_id: str) -> list[str]:
        return [r["model"] for r in conn.execute("SELECT model FROM checkpoints WHERE job_id = ?", (job_id,))]

    def forget_checkpoints(self, conn, job_id: str) -> None:
        conn.execute("DELETE FROM checkpoints WHERE job_id = ?", (job_id,))


def _root_of(model_id: str) -> str:
    return model_id.split(":")[1] if model_id.startswith("ft:") else model_id


def base_record(row: dict) -> dict:
    """A catalog entry as the registry describes models (the API's `Model` wire type has the same fields)."""
    return {"id": row["name"], "created": row.get("created") or 0, "owned_by": "tunelab",
            "parent": None, "root": row["name"], "kind": "base", "parameters": row["parameters"],
            "installed": row["installed"], "chat_template": row["chat_template"],
            "architecture": row.get("architecture"), "context_length": row.get("context_length"),
            "fast_paths": row.get("fast_paths")}


def _tuned_record(row) -> dict:
    return {"id": row["id"], "created": row["created_at"], "owned_by": row["owned_by"],
            "parent": row["parent"], "root": row["base"], "kind": "fine-tuned", "fine_tuning_job_id": row["job_id"]}
