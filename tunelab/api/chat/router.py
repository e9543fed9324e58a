"""The routes of chat completions: `/v1/chat/completions` (a model or a deployment named in `model`) and Azure's
`/deployments/{name}/chat/completions`, whole or streamed as server-sent events."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ...errors import TunelabError
from ..protocol import ERRORS, ErrorBody, ErrorResponse
from ..services import services
from .protocol import ChatCompletion, ChatRequest
from .service import ChatService

router = APIRouter(tags=["chat"], responses=ERRORS)
STREAMED = {200: {"content": {"text/event-stream": {}}}, 429: {"model": ErrorResponse}}
UNEXPECTED = ErrorBody(message="the server hit an unexpected error; see its log", type="server_error", param=None,
                       code="server_error")

log = logging.getLogger("tunelab.chat")


def chat(request: Request) -> ChatService:
    return services(request).chat


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAMED)
async def chat_completions(body: ChatRequest, svc: ChatService = Depends(chat)):
    """A chat completion from a model — base, fine-tuned (`ft:…`) or a checkpoint (`ft:…:ckpt-step-N`), loaded
    on first use — or from a deployment named in `model`, under its rate limit. With `stream: true`,
    `chat.completion.chunk` events follow, then `data: [DONE]`."""
    return await _answer(svc, body, body.model, explicit=False)


@router.post("/deployments/{deployment}/chat/completions", response_model=ChatCompletion, responses=STREAMED)
async def deployment_chat_completions(deployment: str, body: ChatRequest, svc: ChatService = Depends(chat)):
    """Azure's data-plane route (`AzureOpenAI` calls it with the deployment name as `model`)."""
    return await _answer(svc, body, deployment, explicit=True)


async def _answer(svc: ChatService, body: ChatRequest, name: str, *, explicit: bool):
    state = await svc.begin(body, name, explicit=explicit)
    if not body.stream:
        return JSONResponse((await svc.complete(state, body)).model_dump(), headers=state.headers)

    async def events():
        try:
            async for chunk in svc.stream(state, body):
                yield f"data: {chunk.model_dump_json()}\n\n"
        except Exception as exc:  # after the first byte an HTTP error is impossible: an error event, then the end
            yield f"data: {ErrorResponse(error=_event_error(exc)).model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **state.headers})


def _event_error(exc: Exception) -> ErrorBody:
    """What a stream's error event says: tunelab's own errors as they are written for a person; anything else a
    stable message, its details in the server's log only."""
    if isinstance(exc, TunelabError):
        return ErrorBody(message=exc.message, type="server_error" if exc.status >= 500 else exc.type,
                         param=exc.param, code=exc.code)
    log.exception("a streamed answer failed")
    return UNEXPECTED
