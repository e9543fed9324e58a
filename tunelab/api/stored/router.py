"""The routes of stored chat completions, where the SDK's `client.chat.completions.list / retrieve / update /
delete` and `client.chat.completions.messages.list` call them, Azure's deployment-scoped list beside them, and
tunelab's `POST /stored_completions/export` (a path of its own: `/chat/completions/{id}` is the SDK's update)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from ...store.completions import check_metadata
from ..protocol import ERRORS, Deleted
from ..services import services
from .protocol import ExportedFile, StoredCompletion, StoredCompletionList, StoredExport, StoredMessageList, StoredUpdate
from .service import StoredCompletionsService

router = APIRouter(tags=["stored completions"], responses=ERRORS)
Order = Literal["asc", "desc"]


def stored(request: Request) -> StoredCompletionsService:
    return services(request).stored


def metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` pairs of the query, as the SDK sends a metadata filter."""
    pairs = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    return check_metadata(pairs)


@router.get("/chat/completions", response_model=StoredCompletionList)
def list_stored(model: str | None = Query(None, max_length=256), after: str | None = Query(None, max_length=64),
                limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                metadata: dict[str, str] = Depends(metadata_filter), svc: StoredCompletionsService = Depends(stored)):
    """Chat completions stored with `store: true`, oldest first unless `order=desc`; filter by `model` and
    `metadata[key]=value`; page with `after` (the last id of the previous page)."""
    return svc.list(model=model, metadata=metadata, after=after, limit=limit, order=order)


@router.get("/deployments/{deployment}/chat/completions", response_model=StoredCompletionList)
def list_stored_of_deployment(deployment: str, after: str | None = Query(None, max_length=64),
                              limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                              metadata: dict[str, str] = Depends(metadata_filter),
                              svc: StoredCompletionsService = Depends(stored)):
    """Azure's form (`AzureOpenAI(azure_deployment=…)`): the stored completions of that deployment."""
    return svc.list(model=deployment, metadata=metadata, after=after, limit=limit, order=order)


@router.get("/chat/completions/{completion_id}", response_model=StoredCompletion)
def retrieve_stored(completion_id: str, svc: StoredCompletionsService = Depends(stored)):
    return svc.get(completion_id)


@router.post("/chat/completions/{completion_id}", response_model=StoredCompletion)
def update_stored(completion_id: str, body: StoredUpdate, svc: StoredCompletionsService = Depends(stored)):
    """Replace the metadata (a rating is `rating`: good | bad); tunelab's `edited_content` keeps an edited
    answer beside the original."""
    return svc.update(completion_id, body)


@router.delete("/chat/completions/{completion_id}", response_model=Deleted)
def delete_stored(completion_id: str, svc: StoredCompletionsService = Depends(stored)):
    return svc.delete(completion_id)


@router.get("/chat/completions/{completion_id}/messages", response_model=StoredMessageList)
def list_stored_messages(completion_id: str, after: str | None = Query(None, max_length=80),
                         limit: int = Query(20, ge=1, le=100), order: Order = "asc",
                         svc: StoredCompletionsService = Depends(stored)):
    """The messages of the stored completion's request, each with its id."""
    return svc.messages(completion_id, after=after, limit=limit, order=order)


@router.post("/stored_completions/export", response_model=ExportedFile)
def export_stored(body: StoredExport, svc: StoredCompletionsService = Depends(stored)):
    """A training file (purpose `fine-tune`) made of stored completions: `supervised` chat JSONL (the answer,
    or its edit; answers rated bad left out) or `preference` JSONL (an answer rated good or edited preferred
    over one rated bad, or over the original it replaced)."""
    return svc.export(body)
