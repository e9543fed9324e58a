"""`/v1/deployments`: named endpoints for models, in Azure's shape (`sku`, `properties.model`,
`provisioningState`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from ..schemas import ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(prefix="/deployments", tags=["deployments"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})


class Sku(BaseModel):
    name: str = "Standard"
    capacity: int = Field(default=5, description="thousands of tokens per minute (6 requests per minute each)")


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, description="a model id: base, ft:…, or ft:…:ckpt-step-N")
    format: str = "OpenAI"
    version: str | None = None


class DeploymentProperties(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: ModelRef
    raiPolicyName: str | None = Field(default="Default", description="content filter policy: Default or None")


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    sku: Sku = Sku()
    properties: DeploymentProperties


class Deployment(BaseModel):
    id: str
    name: str
    type: str
    sku: Sku
    properties: dict[str, Any]
    systemData: dict[str, Any]


class DeploymentList(BaseModel):
    value: list[Deployment]


@router.put("/{name}", response_model=Deployment, status_code=201)
def create_deployment(name: str, body: DeploymentCreate, svc: Service = Depends(service)) -> dict:
    """Deploy a model under `name`. It is `Creating` until loaded and warmed up, then `Succeeded`."""
    return svc.deployments.create(name, body.properties.model.name, body.sku.capacity, body.sku.name,
                                  body.properties.raiPolicyName)


@router.get("", response_model=DeploymentList)
def list_deployments(svc: Service = Depends(service)) -> dict:
    return svc.deployments.list()


@router.get("/{name}", response_model=Deployment)
def get_deployment(name: str, svc: Service = Depends(service)) -> dict:
    return svc.deployments.get(name)


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_deployment(name: str, svc: Service = Depends(service)) -> Response:
    """Delete the deployment; its adapter is freed when no other deployment serves the same model."""
    svc.deployments.delete(name)
    return Response(status_code=204)
