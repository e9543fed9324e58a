"""The deployments service: create (provisioned in the background), list, retrieve and delete deployments."""

from __future__ import annotations

from dataclasses import dataclass

from ...deploy.deployments import Deployments
from ...deploy.engines import EngineSpec
from .protocol import Deployment, DeploymentCreate, DeploymentList


@dataclass
class DeploymentsService:
    deployments: Deployments

    def create(self, name: str, body: DeploymentCreate) -> Deployment:
        chosen = body.properties.engine
        engine = EngineSpec.parse(chosen.model_dump(exclude_none=True) if chosen is not None else None)
        return self._shown(self.deployments.create(name, body.properties.model.name, body.sku.capacity,
                                                   body.sku.name, body.properties.raiPolicyName, engine))

    def list(self) -> DeploymentList:
        return DeploymentList(value=[self._shown(row) for row in self.deployments.list()])

    def get(self, name: str) -> Deployment:
        return self._shown(self.deployments.get(name))

    def _shown(self, row) -> Deployment:
        return Deployment.of(row, self.deployments.engine_state(row["name"]))

    def delete(self, name: str) -> None:
        self.deployments.delete(name)
