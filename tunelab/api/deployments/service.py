"""The deployments service: create (provisioned in the background), list, retrieve and delete deployments."""

from __future__ import annotations

from dataclasses import dataclass

from ...deploy.deployments import Deployments
from .protocol import Deployment, DeploymentCreate, DeploymentList


@dataclass
class DeploymentsService:
    deployments: Deployments

    def create(self, name: str, body: DeploymentCreate) -> Deployment:
        return Deployment.of(self.deployments.create(name, body.properties.model.name, body.sku.capacity,
                                                     body.sku.name, body.properties.raiPolicyName))

    def list(self) -> DeploymentList:
        return DeploymentList(value=[Deployment.of(row) for row in self.deployments.list()])

    def get(self, name: str) -> Deployment:
        return Deployment.of(self.deployments.get(name))

    def delete(self, name: str) -> None:
        self.deployments.delete(name)
