"""The models service: every model the registry knows, and deletion of a fine-tuned model unless a deployment
serves it or an unfinished job continues from it."""

from __future__ import annotations

from dataclasses import dataclass

from ...deploy.deployments import Deployments
from ...errors import InvalidRequest
from ...inference.pool import EnginePool
from ...jobs.queue import Queue
from ...models.registry import Registry
from ...store.db import Database
from ...store.exports import Exports
from .protocol import Model, ModelList


@dataclass
class ModelsService:
    db: Database
    registry: Registry
    queue: Queue
    deployments: Deployments
    pool: EnginePool
    exports: Exports

    def list(self) -> ModelList:
        """Base models of the catalog, then fine-tuned models."""
        return ModelList(data=[Model(**record) for record in self.registry.list()])

    def get(self, model_id: str) -> Model:
        return Model(**self.registry.get(model_id))

    def delete(self, model_id: str) -> dict:
        if self.registry.is_base(model_id):
            raise InvalidRequest(f"{model_id!r} is a base model; only fine-tuned models can be deleted", param="model")
        with self.db.write() as conn:
            if self.registry.fine_tuned(model_id, conn) is not None:  # else delete() names the unknown model
                users = self.deployments.names_serving(conn, model_id)
                if users:
                    raise InvalidRequest(f"the model {model_id!r} is deployed as {users[0]!r}; delete the "
                                         "deployment first", param="model")
                job = self.queue.active_job_continuing(conn, model_id)
                if job:
                    raise InvalidRequest(f"fine-tuning job {job['id']} ({job['status']}) continues from "
                                         f"{model_id!r}; cancel it or wait for it to finish first", param="model")
                export = self.exports.unfinished_of(conn, model_id)
                if export:
                    raise InvalidRequest(f"export {export} reads {model_id!r}; delete the model once it has "
                                         "finished", param="model")
            weights = self.registry.delete(conn, model_id)
        self.registry.remove_weights(weights)  # after the commit: the write lock is not held meanwhile
        self.pool.forget(model_id)
        return {"id": model_id, "object": "model", "deleted": True}
