"""The chat service: request → prompt → generations on the engine pool → a `chat.completion` or its chunks.

`begin()` checks the request (a deployment's rate limit first, before any work, then its content filter) and
submits its generations; `complete()` then builds the whole `chat.completion`, `stream()` yields
`chat.completion.chunk`s as the tokens come, for the route to send as server-sent events. Both wait on an
asyncio queue fed by the engine's thread, so the event loop never blocks; a stream that is abandoned cancels its
generations. With `store: true` the answer is kept (`store/completions.py`) as the client received it: the whole
object, or a stream's chunks put together once it has ended; a stream abandoned or failed keeps nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncio
import json
import logging
import re
import secrets
import time
from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool

from ...data.render import render_prompt, require_text
from ...deploy.deployments import Deployments
from ...deploy.limits import RateLimiter
from ...errors import InvalidRequest, NotFound, TunelabError
from ...inference.engine import SamplingParams
from ...inference.pool import EnginePool, Target
from ...safety.policy import ContentFiltered, Policies, Policy
from ...store.completions import CompletionStore
from .protocol import (ChatChoice, ChatChoiceMessage, ChatCompletion, ChatCompletionChunk, ChatRequest,
                       ChoiceLogprobs, ChunkChoice, ChunkDelta, PromptFilterResult, Usage)

SENTENCE_END = re.compile(r"[.!?\n]")
# Without max_tokens, a rate-limited request is admitted on its prompt plus this many tokens (or the room left in
# the context, if less), then charged what it really produced.
DEFAULT_COMPLETION_ESTIMATE = 512

log = logging.getLogger("tunelab.chat")


class GenerationFailed(TunelabError):
    """The engine could not finish an answer. What went wrong is in the server's log, not in the answer."""

    code = "server_error"
    type = "server_error"
    status = 500

    def __init__(self):
        super().__init__("the model failed while answering; see the server's log")


class Answering:
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
        self.deployment = None

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
                log.error("answer %s: generation %d failed: %s", self.id, index, payload)
                if isinstance(payload, TunelabError):  # an engine elsewhere: its message names it, as written
                    raise payload
                raise GenerationFailed()
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

    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, sum(len(g.tokens) for g in self.generations))

    def prompt_filter_results(self) -> list[PromptFilterResult]:
        return [PromptFilterResult(content_filter_results=self.prompt_results)]


@dataclass
class ChatService:
    deployments: Deployments
    policies: Policies
    pool: EnginePool
    completions: CompletionStore | None = None  # where `store: true` keeps answers

    async def begin(self, request: ChatRequest, name: str, *, explicit: bool = False) -> Answering:
        """Start answering `request` with `name`: a deployment (its model, under its rate limit and content
        filter) or, unless `explicit` (Azure's deployment route), a model id."""
        served = await run_in_threadpool(self.deployments.serving, name)
        if served is None and explicit:
            raise NotFound(f"no deployment named {name!r}", param="deployment", code="DeploymentNotFound")
        if served is None:
            return await self._start(request, model_id=name)
        row, limiter = served
        return await self._start(request, model_id=row["model"], limiter=limiter, deployment=name,
                                 policy=self.policies.get(row["rai_policy"]))

    async def _start(self, request: ChatRequest, *, model_id: str, limiter: RateLimiter | None = None,
                     deployment: str | None = None, policy: Policy | None = None) -> Answering:
        """Check the request against the model (and a deployment's rate limit and content filter), render the
        prompt and submit its generations. Errors here are ordinary HTTP errors; once this returns, the answer is
        being generated."""
        n = request.n or 1
        limit = request.max_completion_tokens or request.max_tokens
        charge = headers = state = None
        if limiter is not None:  # before any work, on what is known without the model: a flood costs nothing
            charge, headers = limiter.admit(n * (limit or 1), what=f"deployment {deployment}")
        try:
            messages = _messages(request)
            if deployment is not None:  # its own engine: in process, or a server elsewhere (deploy/engines.py)
                target: Target = await run_in_threadpool(self.deployments.target, deployment, model_id)
            else:
                target = await run_in_threadpool(self.pool.target, model_id)
            prompt_results = None
            if policy is not None:  # nothing is generated for a prompt the policy blocks
                screened = [require_text(text) for text in _screened(request)]  # the filter's tokenizer needs text
                blocked, prompt_results = await run_in_threadpool(policy.check, screened, "prompt")
                if blocked:
                    raise ContentFiltered(prompt_results)
            prompt = render_prompt(target.tokenizer, messages, request.tools)
            room = target.engine.context - len(prompt)
            if room < 1:
                raise InvalidRequest(f"the messages take {len(prompt)} tokens; the model's context is "
                                     f"{target.engine.context}", param="messages")
            if limit is not None and limit > room:
                raise InvalidRequest(f"max_tokens is {limit}, but only {room} tokens fit after the {len(prompt)}-"
                                     f"token prompt in the model's {target.engine.context}-token context",
                                     param="max_tokens")
            if limiter is not None:  # Azure's admission estimate: the prompt plus what may be generated
                estimate = len(prompt) + n * (limit or min(room, DEFAULT_COMPLETION_ESTIMATE))
                headers = limiter.resize(charge, estimate, what=f"deployment {deployment}")
            stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
            state = Answering(n, len(prompt))
            state.policy, state.prompt_results, state.deployment = policy, prompt_results, deployment
            if limiter is not None:
                state.limiter, state.charge, state.headers = limiter, charge, headers
            for i in range(n):
                params = SamplingParams(
                    max_tokens=limit or room, temperature=1.0 if request.temperature is None else request.temperature,
                    top_p=request.top_p or 1.0, presence_penalty=request.presence_penalty or 0.0,
                    frequency_penalty=request.frequency_penalty or 0.0,
                    seed=None if request.seed is None else request.seed + i, stop=stops + target.end_strings,
                    logprobs=bool(request.logprobs), top_logprobs=request.top_logprobs or 0)
                state.generations.append(target.engine.submit(prompt, params, adapter=target.adapter,
                                                              end_ids=target.end_ids, on_event=state.listener(i)))
            for generation in state.generations:  # an engine elsewhere that is down or busy: an HTTP error now
                if hasattr(generation, "wait_admitted"):
                    await run_in_threadpool(generation.wait_admitted)
        except BaseException:  # refused or failed before its answer started: nothing runs, nothing is charged
            if state is not None:
                state.cancel()
            if limiter is not None:
                limiter.release(charge)
            raise
        return state

    async def complete(self, state: Answering, request: ChatRequest) -> ChatCompletion:
        texts = [""] * state.n
        logprobs: list[list] = [[] for _ in range(state.n)]
        finish = [None] * state.n
        try:
            async for index, kind, payload in state.events():
                if kind == "delta":
                    texts[index] += payload[0]
                    logprobs[index] += payload[1]
                else:
                    finish[index] = payload
        finally:  # one choice failed, or the request is dropped: the others stop too
            state.cancel()
            state.settle()
        choices = []
        for i in range(state.n):
            choice = ChatChoice(index=i, message=ChatChoiceMessage(content=texts[i]), finish_reason=finish[i],
                                logprobs=ChoiceLogprobs.of(logprobs[i]) if request.logprobs else None)
            if state.policy is not None:
                blocked, results = await run_in_threadpool(state.policy.check, texts[i], "completion")
                choice.content_filter_results = results
                if blocked:  # as Azure: the choice says why, and carries nothing of its text
                    choice.message.content, choice.finish_reason, choice.logprobs = None, "content_filter", None
            choices.append(choice)
        response = ChatCompletion(id=state.id, created=state.created, model=request.model, choices=choices,
                                  usage=state.usage())
        if state.policy is not None:
            response.prompt_filter_results = state.prompt_filter_results()
        await self._keep(response, state, request)
        return response

    async def stream(self, state: Answering, request: ChatRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as the text comes; with `store: true`, what was sent is kept once the stream has ended."""
        kept = Received(state.n) if request.store and self.completions is not None else None
        async for chunk in self._chunks(state, request):
            if kept is not None:
                kept.add(chunk)
            yield chunk
        if kept is not None:
            await self._keep(kept.completion(state, request.model), state, request)

    async def _keep(self, response: ChatCompletion, state: Answering, request: ChatRequest) -> None:
        """One insert off the event loop, only where the client asked for it."""
        if request.store and self.completions is not None:
            await run_in_threadpool(self.completions.add, response.model_dump(), _kept_request(request, state),
                                    request.metadata)

    async def _chunks(self, state: Answering, request: ChatRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks as the text comes. Under a content filter, text is held back until a sentence ends and is
        vetted (with all that came before it) before it is sent, so nothing past flagged text ever leaves."""
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunk(choices: list[ChunkChoice], **fields) -> ChatCompletionChunk:
            made = ChatCompletionChunk(id=state.id, created=state.created, model=request.model, choices=choices,
                                       **fields)
            if include_usage and "usage" not in fields:
                made.usage = None  # present, and null, on every chunk but the last
            return made

        def choice(index: int, delta: ChunkDelta, finish=None, logprobs=None, filtered=None) -> ChatCompletionChunk:
            made = ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)
            if filtered is not None:
                made.content_filter_results = filtered
            return chunk([made])

        def lp(items: list):
            return ChoiceLogprobs.of(items) if request.logprobs else None

        if state.policy is not None:
            yield chunk([], prompt_filter_results=state.prompt_filter_results())
        for i in range(state.n):
            yield choice(i, ChunkDelta(role="assistant", content=""))
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
                        yield choice(index, ChunkDelta(content=payload[0]), logprobs=lp(payload[1]))
                    else:
                        yield choice(index, ChunkDelta(), finish=payload)
                    continue
                if kind == "delta":
                    held[index] += payload[0]
                    held_logprobs[index] += payload[1]
                    if not SENTENCE_END.search(held[index]):
                        continue
                blocked, results = await run_in_threadpool(state.policy.check, sent[index] + held[index],
                                                           "completion")
                if blocked:
                    state.generations[index].cancel()
                    stopped.add(index)
                    yield choice(index, ChunkDelta(), finish="content_filter", filtered=results)
                    continue
                if held[index]:
                    yield choice(index, ChunkDelta(content=held[index]), filtered=results,
                                 logprobs=lp(held_logprobs[index]))
                    sent[index], held[index], held_logprobs[index] = sent[index] + held[index], "", []
                if kind == "done":
                    yield choice(index, ChunkDelta(), finish=payload)
        finally:
            state.cancel()  # the client went away (or we are done): stop generating
            state.settle()
        if include_usage:
            yield chunk([], usage=state.usage())


class Received:
    """A stream's chunks put back together into the `chat.completion` the client received: the text sent (held
    text the filter stopped never was), each choice's finish reason and filter results, the usage."""

    def __init__(self, n: int):
        self.texts = [""] * n
        self.logprobs: list[list | None] = [None] * n
        self.finish: list = [None] * n
        self.filtered: list = [None] * n
        self.prompt_filter_results = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if "prompt_filter_results" in chunk.model_fields_set:
            self.prompt_filter_results = chunk.prompt_filter_results
        for choice in chunk.choices:
            i = choice.index
            self.texts[i] += choice.delta.content or ""
            if choice.logprobs is not None:
                self.logprobs[i] = (self.logprobs[i] or []) + choice.logprobs.content
            if choice.finish_reason is not None:
                self.finish[i] = choice.finish_reason
            if "content_filter_results" in choice.model_fields_set:
                self.filtered[i] = choice.content_filter_results

    def completion(self, state: Answering, model: str) -> ChatCompletion:
        choices = []
        for i, text in enumerate(self.texts):
            filtered_whole = self.finish[i] == "content_filter" and not text  # as the whole object says it
            choice = ChatChoice(index=i, message=ChatChoiceMessage(content=None if filtered_whole else text),
                                finish_reason=self.finish[i],
                                logprobs=None if self.logprobs[i] is None else ChoiceLogprobs(content=self.logprobs[i]))
            if self.filtered[i] is not None:
                choice.content_filter_results = self.filtered[i]
            choices.append(choice)
        response = ChatCompletion(id=state.id, created=state.created, model=model, choices=choices,
                                  usage=state.usage())
        if self.prompt_filter_results is not None:
            response.prompt_filter_results = self.prompt_filter_results
        return response


KEPT_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "max_completion_tokens",
               "max_tokens", "n", "stop", "seed", "presence_penalty", "frequency_penalty")


def _kept_request(request: ChatRequest, state: Answering) -> dict:
    """What a stored completion keeps of its request: the messages as sent, the model asked (and the deployment
    that answered), the system message's text, and the sampling settings that were set."""
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    kept = {"model": request.model, "messages": messages}
    if state.deployment is not None:
        kept["deployment"] = state.deployment
    system = next((m for m in messages if m["role"] in ("system", "developer")), None)
    if system is not None:
        content = system.get("content")
        kept["system"] = "".join(p.get("text", "") for p in content) if isinstance(content, list) else content
    for name in KEPT_FIELDS:
        if getattr(request, name) is not None:
            kept[name] = getattr(request, name)
    return kept


def _screened(request: ChatRequest) -> list[str]:
    """Every text of the conversation the model will read, each judged on its own: every message of every role,
    each text part and the parts joined (as the prompt joins them), tool calls' arguments and the tools offered."""
    texts = []
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            texts.append(content)
        elif content:
            parts = [part.get("text", "") for part in content]
            texts += parts + (["".join(parts)] if len(parts) > 1 else [])
        extra = message.model_extra or {}
        calls = [c.get("function", c) for c in extra.get("tool_calls") or [] if isinstance(c, dict)]
        texts += _strings(calls + ([extra["function_call"]] if extra.get("function_call") else []))
    texts += _strings(request.tools or [])
    return [t for t in texts if t.strip()]


def _strings(value) -> list[str]:
    """The strings inside JSON values, and inside strings that are JSON themselves (a tool call's arguments)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if not isinstance(value, str):
        return []
    try:
        inner = json.loads(value)
    except ValueError:
        return [value]
    return [value, *_strings(inner)] if isinstance(inner, (dict, list)) else [value]


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
