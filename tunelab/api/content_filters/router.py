"""The routes of `/v1/content_filters`: put, list, retrieve and delete policies (`Default` and `None` are built
in)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..protocol import ERRORS
from ..services import services
from .protocol import PolicyBody, PolicyList, PolicyObject
from .service import ContentFiltersService

router = APIRouter(prefix="/content_filters", tags=["content filters"], responses=ERRORS)


def content_filters(request: Request) -> ContentFiltersService:
    return services(request).content_filters


@router.put("/{name}", response_model=PolicyObject)
def put_policy(name: str, body: PolicyBody, svc: ContentFiltersService = Depends(content_filters)):
    """Create or replace a custom policy; deployments name it in `properties.raiPolicyName`."""
    return svc.put(name, body)


@router.get("", response_model=PolicyList)
def list_policies(svc: ContentFiltersService = Depends(content_filters)):
    return svc.list()


@router.get("/{name}", response_model=PolicyObject)
def get_policy(name: str, svc: ContentFiltersService = Depends(content_filters)):
    return svc.get(name)


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_policy(name: str, svc: ContentFiltersService = Depends(content_filters)) -> Response:
    """Delete a custom policy (refused while a deployment uses it)."""
    svc.delete(name)
    return Response(status_code=204)
