"""The routes of chat completions: `/v1/chat/completions` (a model or a deployment named in `model`) and Azure's
`/deployments/{name}/chat/completions`, whole or streamed as server-sent events."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..protocol import ERRORS, ErrorBody, ErrorResponse
from ..services import services
from .protocol import ChatCompletion, ChatRequest
from .service import ChatService

router = APIRouter(tags=["chat"], responses=ERRORS)
STREAMED = {200: {"content": {"text/event-stream": {}}}, 429: {"model": ErrorResponse}}


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
            error = ErrorResponse(error=ErrorBody(message=f"generation failed: {exc}", type="server_error",
                                                  param=None, code=None))
            yield f"data: {error.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **state.headers})
