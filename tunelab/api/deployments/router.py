"""The routes of `/v1/deployments`: create (PUT), list, retrieve and delete named endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..protocol import ERRORS
from ..services import services
from .protocol import Deployment, DeploymentCreate, DeploymentList
from .service import DeploymentsService

router = APIRouter(prefix="/deployments", tags=["deployments"], responses=ERRORS)


def deployments(request: Request) -> DeploymentsService:
    return services(request).deployments


@router.put("/{name}", response_model=Deployment, status_code=201)
def create_deployment(name: str, body: DeploymentCreate, svc: DeploymentsService = Depends(deployments)):
    """Deploy a model under `name`. It is `Creating` until loaded and warmed up, then `Succeeded`."""
    return svc.create(name, body)


@router.get("", response_model=DeploymentList)
def list_deployments(svc: DeploymentsService = Depends(deployments)):
    return svc.list()


@router.get("/{name}", response_model=Deployment)
def get_deployment(name: str, svc: DeploymentsService = Depends(deployments)):
    return svc.get(name)


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_deployment(name: str, svc: DeploymentsService = Depends(deployments)) -> Response:
    """Delete the deployment; its adapter is freed when no other deployment serves the same model."""
    svc.delete(name)
    return Response(status_code=204)
