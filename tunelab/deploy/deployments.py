"""Deployments: named endpoints for models, in Azure's shape, provisioned in the background.

    PUT /v1/deployments/base-travel  {"sku": {"name": "Standard", "capacity": 5},
                                      "properties": {"model": {"format": "OpenAI", "name": "SmolLM2-135M-Instruct"},
                                                     "raiPolicyName": "Default"}}

A deployment is `Creating` until its model is loaded (the base once, a fine-tune as an adapter on it) and has
answered a one-token warm-up, then `Succeeded` (or `Failed`, with the reason). Each has its own token-rate
limiter. On restart, every deployment is provisioned again. This module owns the `deployments` table; records come
back as rows, which the API shapes.

`properties.engine` chooses what decodes: tunelab's in-process engine (`local`, the default), or a llama.cpp or
vLLM server (engines.py). Everything above the engine — names, states, limits, the content filter, usage — is the
same for all of them.
"""

from __future__ import annotations

import re
import threading
import time

from ..errors import InvalidRequest, NotFound, TunelabError
from ..inference.pool import EnginePool
from ..models.registry import Registry
from ..store.db import Database
from ..safety.policy import Policies
from .engines import Engines, EngineSpec
from .limits import RateLimiter

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")


class DeploymentNotReady(TunelabError):
    """Transient: the SDK retries a 503 after Retry-After."""

    code = "deployment_not_ready"
    type = "server_error"
    status = 503


class Deployments:
    def __init__(self, db: Database, registry: Registry, pool: EnginePool, policies: Policies,
                 engines: Engines | None = None):
        self.db = db
        self.policies = policies
        self.registry = registry
        self.pool = pool
        self.engines = engines
        self.limiters: dict[str, RateLimiter] = {}
        self.elsewhere: set[str] = set()  # deployments whose engine is not the local one

    def create(self, name: str, model: str, capacity: int, sku: str = "Standard", policy: str | None = "Default",
               engine: EngineSpec | None = None):
        if not NAME.match(name):
            raise InvalidRequest("a deployment name is 2–64 letters, digits, '.', '_' or '-', starting with a "
                                 f"letter or digit; got {name!r}", param="name")
        if sku != "Standard":
            raise InvalidRequest(f"sku {sku!r} is not available; use 'Standard'", param="sku.name")
        if not 1 <= capacity <= 1000:
            raise InvalidRequest("capacity is thousands of tokens per minute, from 1 to 1000", param="sku.capacity")
        try:
            self.policies.get(policy)
        except NotFound:
            raise InvalidRequest(f"content filter policy {policy!r} does not exist; use Default, None or a policy "
                                 "created with PUT /v1/content_filters/{name}", param="properties.raiPolicyName") from None
        engine = engine or EngineSpec()
        if engine.type != "local":
            if self.engines is None:
                raise InvalidRequest("this service runs deployments on its local engine only",
                                     param="properties.engine.type")
            self.engines.check(engine)
        self.registry.locate(model)  # an unknown model is a 404 now, not a Failed deployment later
        now = int(time.time())
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM deployments WHERE name = ?", (name,)).fetchone():
                raise InvalidRequest(f"a deployment named {name!r} already exists; delete it first or choose another "
                                     "name", param="name")
            conn.execute("INSERT INTO deployments (name, model, sku_name, capacity, rai_policy, state, created_at, "
                         "updated_at, engine, engine_url, engine_kind) "
                         "VALUES (?, ?, ?, ?, ?, 'Creating', ?, ?, ?, ?, ?)",
                         (name, model, sku, capacity, None if policy == "None" else policy, now, now, engine.type,
                          engine.url, engine.kind))
        self.limiters[name] = RateLimiter(capacity)
        if engine.type != "local":
            self.elsewhere.add(name)
        self.provision(name)
        return self.get(name)

    def provision(self, name: str) -> None:
        """Load and warm up in the background; the state says when it is done."""
        threading.Thread(target=self._provision, args=(name,), name=f"tunelab-deploy-{name}", daemon=True).start()

    def _provision(self, name: str) -> None:
        row = self._row(name)
        try:
            spec = engine_spec(row)
            if spec.type == "local":
                target = self.pool.target(row["model"])
            else:
                target = self.engines.open(name, spec, row["model"], on_gave_up=lambda why: self._failed(name, why))
            target.engine.warm_up(target.adapter, target.end_ids)
            state, error = "Succeeded", None
        except Exception as exc:
            state, error = "Failed", f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            if row["engine"] != "local" and self.engines is not None:
                self.engines.stop(name)  # a server that started but cannot answer is not left running
        with self.db.write() as conn:
            updated = conn.execute("UPDATE deployments SET state = ?, error = ?, updated_at = ? WHERE name = ? AND "
                                   "model = ?", (state, error, int(time.time()), name, row["model"])).rowcount
        if not updated and self.engines is not None and not self.db.query(
                "SELECT 1 FROM deployments WHERE name = ?", (name,)):
            self.engines.stop(name)  # deleted while its engine started: nothing may outlive it

    def _failed(self, name: str, why: str) -> None:
        """An engine tunelab owns stopped for good: the deployment says so."""
        with self.db.write() as conn:
            conn.execute("UPDATE deployments SET state = 'Failed', error = ?, updated_at = ? WHERE name = ?",
                         (why, int(time.time()), name))

    def target(self, name: str, model_id: str):
        """Where a request to deployment `name` goes: its engine elsewhere, or the pool's engine for its model."""
        if name not in self.elsewhere:
            return self.pool.target(model_id)
        remote = self.engines.target(name)
        if remote is None:  # deleted, or provisioned again, meanwhile: never silently the local engine
            raise DeploymentNotReady(f"the engine of deployment {name!r} is not running; try again in a few seconds")
        return remote

    def engine_state(self, name: str) -> dict | None:
        """The engine process (or URL) behind deployment `name` as the API shows it; None for the local engine."""
        return self.engines.shown(name) if self.engines is not None else None

    def close(self) -> None:
        """At the service's stop: the engine processes tunelab started stop with it."""
        if self.engines is not None:
            self.engines.close()

    def resume_all(self) -> None:
        """After a restart: every deployment is provisioned again."""
        with self.db.write() as conn:
            conn.execute("UPDATE deployments SET state = 'Creating', error = NULL")
        for row in self.db.query("SELECT name, capacity, engine FROM deployments"):
            self.limiters[row["name"]] = RateLimiter(row["capacity"])
            if row["engine"] != "local":
                self.elsewhere.add(row["name"])
            self.provision(row["name"])

    def list(self) -> list:
        return self.db.query("SELECT * FROM deployments ORDER BY created_at, name")

    def get(self, name: str):
        return self._row(name)

    @staticmethod
    def names_serving(conn, model_id: str) -> list[str]:
        """Names of the deployments serving `model_id`, inside the caller's transaction."""
        return [r["name"] for r in conn.execute("SELECT name FROM deployments WHERE model = ?", (model_id,))]

    @staticmethod
    def names_filtered_by(conn, policy: str) -> list[str]:
        """Names of the deployments whose content filter is `policy`, inside the caller's transaction."""
        return [r["name"] for r in conn.execute("SELECT name FROM deployments WHERE rai_policy = ?", (policy,))]

    def delete(self, name: str) -> None:
        row = self._row(name)
        with self.db.write() as conn:
            conn.execute("DELETE FROM deployments WHERE name = ?", (name,))
        self.limiters.pop(name, None)
        self.elsewhere.discard(name)
        if self.engines is not None:
            self.engines.stop(name)
        still_used = self.db.query("SELECT 1 FROM deployments WHERE model = ? AND engine = 'local'", (row["model"],))
        if not still_used and row["engine"] == "local":
            self.pool.forget(row["model"])  # frees the adapter (a base model stays loaded for other requests)

    def serving(self, name: str):
        """The deployment `name` as a chat request sees it: (row, limiter), or None if there is none."""
        rows = self.db.query("SELECT * FROM deployments WHERE name = ?", (name,))
        if not rows:
            return None
        row = rows[0]
        if row["state"] == "Creating":
            raise DeploymentNotReady(f"the deployment {name!r} is still being created; try again in a few seconds")
        if row["state"] == "Failed":
            raise InvalidRequest(f"the deployment {name!r} failed to provision: {row['error']}", param="model")
        return row, self.limiters.setdefault(name, RateLimiter(row["capacity"]))

    def _row(self, name: str):
        rows = self.db.query("SELECT * FROM deployments WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no deployment named {name!r}", param="deployment")
        return rows[0]


def engine_spec(row) -> EngineSpec:
    """The engine a `deployments` row names."""
    return EngineSpec(row["engine"], row["engine_url"], row["engine_kind"])
