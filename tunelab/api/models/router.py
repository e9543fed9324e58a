"""The routes of `/v1/models`: list, retrieve, and delete a fine-tuned model with its weights."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..protocol import ERRORS, Deleted
from ..services import services
from .protocol import Model, ModelList
from .service import ModelsService

router = APIRouter(prefix="/models", tags=["models"], responses=ERRORS)


def models(request: Request) -> ModelsService:
    return services(request).models


@router.get("", response_model=ModelList)
def list_models(svc: ModelsService = Depends(models)):
    """Base models of the catalog, then fine-tuned models."""
    return svc.list()


@router.get("/{model_id:path}", response_model=Model)
def retrieve_model(model_id: str, svc: ModelsService = Depends(models)):
    """A base model, a fine-tuned model or a checkpoint (`…:ckpt-step-N`)."""
    return svc.get(model_id)


@router.delete("/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, svc: ModelsService = Depends(models)):
    """Delete a fine-tuned model and its weights. Base models cannot be deleted."""
    return svc.delete(model_id)
