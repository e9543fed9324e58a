"""`/v1/content_filters`: content filter policies for deployments (`Default` and `None` are built in)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from ..schemas import ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(prefix="/content_filters", tags=["content filters"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})

Level = Literal["low", "medium", "high", "off"]


class Thresholds(BaseModel):
    """Per category, the lowest severity that is blocked (`off`: never); unnamed categories block medium."""

    model_config = ConfigDict(extra="forbid")
    hate: Level = "medium"
    sexual: Level = "medium"
    violence: Level = "medium"
    self_harm: Level = "medium"


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Thresholds = Thresholds()
    completion: Thresholds = Thresholds()
    blocklist: list[str] = Field(default=[], max_length=1000, description="terms blocked wherever they appear")


class PolicyObject(PolicyBody):
    name: str


class PolicyList(BaseModel):
    value: list[PolicyObject]


@router.put("/{name}", response_model=PolicyObject)
def put_policy(name: str, body: PolicyBody, svc: Service = Depends(service)) -> dict:
    """Create or replace a custom policy; deployments name it in `properties.raiPolicyName`."""
    return svc.policies.put(name, body.prompt.model_dump(), body.completion.model_dump(), body.blocklist)


@router.get("", response_model=PolicyList)
def list_policies(svc: Service = Depends(service)) -> dict:
    return {"value": svc.policies.list()}


@router.get("/{name}", response_model=PolicyObject)
def get_policy(name: str, svc: Service = Depends(service)) -> dict:
    policy = svc.policies.get(name)
    return policy.as_dict() if policy else {"name": "None", **PolicyBody(
        prompt=Thresholds(hate="off", sexual="off", violence="off", self_harm="off"),
        completion=Thresholds(hate="off", sexual="off", violence="off", self_harm="off")).model_dump()}


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_policy(name: str, svc: Service = Depends(service)) -> Response:
    """Delete a custom policy (refused while a deployment uses it)."""
    svc.policies.delete(name)
    return Response(status_code=204)
