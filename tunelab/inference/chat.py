"""Chat completions on top of the engine pool: request → prompt → generations → OpenAI response or SSE chunks.

`start()` checks the request and submits it; `complete()` then returns the whole `chat.completion`, `stream()` yields `chat.completion.chunk` objects as the
tokens come, for the route to send as server-sent events. Both run the engine in its own thread and wait on an
asyncio queue, so the event loop never blocks; a stream that is abandoned cancels its generations.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool

from ..api.schemas import ChatRequest
from ..data.render import render_prompt
from ..errors import InvalidRequest, NotFound
from ..deploy.limits import RateLimiter
from ..safety.policy import ContentFiltered, Policy
from .engine import SamplingParams, TokenLogprob
from .pool import EnginePool, Target

FINGERPRINT = "fp_tunelab"
SENTENCE_END = re.compile(r"[.!?\n]")
# Without max_tokens, a rate-limited request is admitted on its prompt plus this many tokens (or the room left in
# the context, if less), then charged what it really produced.
DEFAULT_COMPLETION_ESTIMATE = 512


async def complete(state: "_State", request: ChatRequest) -> dict:
    texts = [""] * state.n
    logprobs: list[list] = [[] for _ in range(state.n)]
    finish = [None] * state.n
    async for index, kind, payload in state.events():
        if kind == "delta":
            texts[index] += payload[0]
            logprobs[index] += payload[1]
        else:
            finish[index] = payload
    state.settle()
    choices = []
    for i in range(state.n):
        choice = {"index": i, "message": {"role": "assistant", "content": texts[i], "refusal": None,
                                          "annotations": []},
                  "logprobs": _logprobs(logprobs[i]) if request.logprobs else None, "finish_reason": finish[i]}
        if state.policy is not None:
            blocked, results = await run_in_threadpool(state.policy.check, texts[i], "completion")
            choice["content_filter_results"] = results
            if blocked:  # as Azure: the choice says why, and carries no content
                choice["message"]["content"], choice["finish_reason"] = None, "content_filter"
        choices.append(choice)
    response = {"id": state.id, "object": "chat.completion", "created": state.created, "model": request.model,
                "system_fingerprint": FINGERPRINT, "choices": choices, "usage": state.usage()}
    if state.policy is not None:
        response["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": state.prompt_results}]
    return response


async def stream(state: "_State", request: ChatRequest) -> AsyncIterator[dict]:
    """Chunks as the text comes. Under a content filter, text is held back until a sentence ends and is vetted
    (with all that came before it) before it is sent, so nothing past flagged text ever leaves."""
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish=None, logprobs=None, filtered=None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        if filtered is not None:
            choice["content_filter_results"] = filtered
        return {"id": state.id, "object": "chat.completion.chunk", "created": state.created, "model": request.model,
                "system_fingerprint": FINGERPRINT, "choices": [choice], **extra}

    if state.policy is not None:
        yield {"id": state.id, "object": "chat.completion.chunk", "created": state.created, "model": request.model,
               "system_fingerprint": FINGERPRINT, "choices": [], **extra,
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": state.prompt_results}]}
    for i in range(state.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    sent = [""] * state.n
    held = [""] * state.n
    held_logprobs: list[list] = [[] for _ in range(state.n)]
    stopped: set[int] = set()
    try:
        async for index, kind, payload in state.events():
            if index in stopped:
                continue
            if state.policy is None:
                if kind == "delta":
                    text, lps = payload
                    yield chunk(index, {"content": text}, logprobs=_logprobs(lps) if request.logprobs else None)
                else:
                    yield chunk(index, {}, finish=payload)
                continue
            if kind == "delta":
                held[index] += payload[0]
                held_logprobs[index] += payload[1]
                if not SENTENCE_END.search(held[index]):
                    continue
            blocked, results = await run_in_threadpool(state.policy.check, sent[index] + held[index], "completion")
            if blocked:
                state.generations[index].cancel()
                stopped.add(index)
                yield chunk(index, {}, finish="content_filter", filtered=results)
                continue
            if held[index]:
                yield chunk(index, {"content": held[index]}, filtered=results,
                            logprobs=_logprobs(held_logprobs[index]) if request.logprobs else None)
                sent[index], held[index], held_logprobs[index] = sent[index] + held[index], "", []
            if kind == "done":
                yield chunk(index, {}, finish=payload)
    finally:
        state.cancel()  # the client went away (or we are done): stop generating
        state.settle()
    if include_usage:
        yield {"id": state.id, "object": "chat.completion.chunk", "created": state.created, "model": request.model,
               "system_fingerprint": FINGERPRINT, "choices": [], "usage": state.usage()}


class _State:
    """The generations of one request and the queue their events arrive on."""

    def __init__(self, n: int, prompt_tokens: int):
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.queue: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.generations = []
        self.limiter, self.charge, self.headers = None, None, {}
        self.policy, self.prompt_results = None, None

    def listener(self, index: int):
        def on_event(kind, payload):
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, kind, payload))
            except RuntimeError:  # the event loop is gone (the server is stopping): nobody waits for this answer
                self.generations[index].cancel()
        return on_event

    async def events(self):
        done = set()
        while len(done) < self.n:
            index, kind, payload = await self.queue.get()
            if kind == "error":
                raise RuntimeError(payload)
            if kind == "done":
                done.add(index)
            yield index, kind, payload
            if self.generations[index].cancelled:  # filtered: it will send nothing more
                done.add(index)

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    def settle(self) -> None:
        """Charge the deployment's token window what was really used."""
        if self.limiter is not None:
            self.limiter.settle(self.charge, self.prompt_tokens + sum(len(g.tokens) for g in self.generations))

    def usage(self) -> dict:
        completion = sum(len(g.tokens) for g in self.generations)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}


async def begin(svc, request: ChatRequest, name: str, *, explicit: bool = False) -> "_State":
    """Start answering `request` with `name`: a deployment (its model, under its rate limit and content filter)
    or, unless `explicit` (Azure's deployment route), a model id. `svc` is the service (api/service.py)."""
    served = await run_in_threadpool(svc.deployments.serving, name)
    if served is None and explicit:
        raise NotFound(f"no deployment named {name!r}", param="deployment", code="DeploymentNotFound")
    if served is None:
        return await start(svc.pool, request, model_id=name)
    row, limiter = served
    return await start(svc.pool, request, model_id=row["model"], limiter=limiter, deployment=name,
                       policy=svc.policies.get(row["rai_policy"]))


async def start(pool: EnginePool, request: ChatRequest, *, model_id: str | None = None,
                limiter: RateLimiter | None = None, deployment: str | None = None,
                policy: Policy | None = None) -> _State:
    """Check the request against the model (and a deployment's rate limit), render the prompt and submit its
    generations. Errors here are ordinary HTTP errors; once this returns, the answer is being generated."""
    target: Target = await run_in_threadpool(pool.target, model_id or request.model)
    messages = _messages(request)
    prompt_results = None
    if policy is not None:  # nothing is generated for a prompt the policy blocks
        asked = "\n".join(m["content"] for m in messages if m["role"] in ("system", "user") and m.get("content"))
        blocked, prompt_results = await run_in_threadpool(policy.check, asked, "prompt")
        if blocked:
            raise ContentFiltered(prompt_results)
    prompt = render_prompt(target.tokenizer, messages, request.tools)
    room = target.engine.context - len(prompt)
    if room < 1:
        raise InvalidRequest(f"the messages take {len(prompt)} tokens; the model's context is "
                             f"{target.engine.context}", param="messages")
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None and limit > room:
        raise InvalidRequest(f"max_tokens is {limit}, but only {room} tokens fit after the {len(prompt)}-token "
                             f"prompt in the model's {target.engine.context}-token context", param="max_tokens")
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    n = request.n or 1
    state = _State(n, len(prompt))
    state.policy, state.prompt_results = policy, prompt_results
    if limiter is not None:  # Azure's admission estimate: the prompt plus what may be generated
        estimate = len(prompt) + n * (limit or min(room, DEFAULT_COMPLETION_ESTIMATE))
        state.charge, state.headers = limiter.admit(estimate, what=f"deployment {deployment}")
        state.limiter = limiter
    for i in range(n):
        params = SamplingParams(
            max_tokens=limit or room, temperature=1.0 if request.temperature is None else request.temperature,
            top_p=request.top_p or 1.0, presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=None if request.seed is None else request.seed + i, stop=stops + target.end_strings,
            logprobs=bool(request.logprobs), top_logprobs=request.top_logprobs or 0)
        state.generations.append(target.engine.submit(prompt, params, adapter=target.adapter, end_ids=target.end_ids,
                                                      on_event=state.listener(i)))
    return state


def _messages(request: ChatRequest) -> list[dict]:
    """Messages as the chat template takes them: `developer` is the system role; text parts are joined."""
    messages = []
    for i, m in enumerate(request.messages):
        message = m.model_dump(exclude_none=True)
        if message["role"] == "developer":
            message["role"] = "system"
        content = message.get("content")
        if isinstance(content, list):
            if any(part.get("type") != "text" for part in content):
                raise InvalidRequest("only text content is supported (no images or audio)",
                                     param=f"messages[{i}].content")
            message["content"] = "".join(part.get("text", "") for part in content)
        messages.append(message)
    return messages


def _logprobs(items: list[TokenLogprob]) -> dict:
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                         "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())} for s, v in t.top]}
                        for t in items], "refusal": None}
