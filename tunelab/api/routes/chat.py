"""`/v1/chat/completions`: answers from base and fine-tuned models, whole or streamed as server-sent events."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from ...inference.chat import complete, start, stream
from ..schemas import ChatCompletion, ChatRequest, ErrorResponse
from ..service import Service
from .files import service

router = APIRouter(tags=["chat"], responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                                             404: {"model": ErrorResponse}})


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatRequest, svc: Service = Depends(service)):
    """A chat completion from any model: base, fine-tuned (`ft:…`) or a checkpoint (`ft:…:ckpt-step-N`).
    A model not loaded yet is loaded on first use. With `stream: true`, `chat.completion.chunk` events follow,
    then `data: [DONE]`."""
    state = await start(svc.pool, body)
    if not body.stream:
        return await complete(state, body)

    async def events():
        try:
            async for chunk in stream(state, body):
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as exc:  # after the first byte an HTTP error is impossible: an error event, then the end
            error = {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
