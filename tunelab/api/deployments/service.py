"""The deployments service: create (provisioned in the background), list, retrieve and delete deployments."""

from __future__ import annotations

from ...deploy.deployments import Deployments
from .protocol import Deployment, DeploymentCreate, DeploymentList


class DeploymentsService:
    def __init__(self, deployments: Deployments):
        self.deployments = deployments

    def create(self, name: str, body: DeploymentCreate) -> Deployment:
        return Deployment.of(self.deployments.create(name, body.properties.model.name, body.sku.capacity,
                                                     body.sku.name, body.properties.raiPolicyName))

    def list(self) -> DeploymentList:
        return DeploymentList(value=[Deployment.of(row) for row in self.deployments.list()])

    def get(self, name: str) -> Deployment:
        return Deployment.of(self.deployments.get(name))

    def delete(self, name: str) -> None:
        self.deployments.delete(name)
