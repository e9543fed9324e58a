"""`/v1/models`: base and fine-tuned models; deleting a fine-tuned model removes its files."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..schemas import Deleted, ErrorResponse, Model, ModelList
from ..service import Service
from .files import service

router = APIRouter(prefix="/models", tags=["models"],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})


@router.get("", response_model=ModelList)
def list_models(svc: Service = Depends(service)) -> dict:
    """Base models of the catalog, then fine-tuned models."""
    return {"object": "list", "data": svc.registry.list()}


@router.get("/{model_id:path}", response_model=Model)
def retrieve_model(model_id: str, svc: Service = Depends(service)) -> dict:
    """A base model, a fine-tuned model or a checkpoint (`…:ckpt-step-N`)."""
    return svc.registry.get(model_id)


@router.delete("/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, svc: Service = Depends(service)) -> dict:
    """Delete a fine-tuned model and its weights. Base models cannot be deleted."""
    deleted = svc.registry.delete(model_id)
    svc.pool.forget(model_id)
    return deleted
