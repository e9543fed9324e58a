"""`/v1/chat/completions`: answers from base and fine-tuned models, whole or streamed as server-sent events."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from ...inference.chat import begin, complete, stream
from ..schemas import ChatCompletion, ChatRequest, ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(tags=["chat"], responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                                             404: {"model": ErrorResponse}})


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}, 429: {"model": ErrorResponse}})
async def chat_completions(body: ChatRequest, svc: Service = Depends(service)):
    """A chat completion from a model — base, fine-tuned (`ft:…`) or a checkpoint (`ft:…:ckpt-step-N`), loaded
    on first use — or from a deployment named in `model`, under its rate limit. With `stream: true`,
    `chat.completion.chunk` events follow, then `data: [DONE]`."""
    return await _answer(svc, body, body.model, explicit=False)


@router.post("/deployments/{deployment}/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}, 429: {"model": ErrorResponse}})
async def deployment_chat_completions(deployment: str, body: ChatRequest, svc: Service = Depends(service)):
    """Azure's data-plane route (`AzureOpenAI` calls it with the deployment name as `model`)."""
    return await _answer(svc, body, deployment, explicit=True)


async def _answer(svc: Service, body: ChatRequest, name: str, *, explicit: bool):
    state = await begin(svc, body, name, explicit=explicit)
    if not body.stream:
        return JSONResponse(await complete(state, body), headers=state.headers)

    async def events():
        try:
            async for chunk in stream(state, body):
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as exc:  # after the first byte an HTTP error is impossible: an error event, then the end
            error = {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **state.headers})
