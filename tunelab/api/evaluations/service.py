"""The evaluations service: comparisons created, run in the background on the server's event loop through the
chat service (so deployments keep their limits and filters), stored with their progress and report; and the
comparison a job with a validation file gets when it succeeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path

from ...config import Settings
from ...deploy.deployments import Deployments
from ...deploy.limits import RateLimited
from ...errors import InvalidRequest
from ...evaluate.checks import choose
from ...evaluate.compare import Answer, Prompt, Spec, compare, validation_loss
from ...evaluate.render import html, markdown
from ...evaluate.runs import Runs
from ...inference.pool import EnginePool
from ...jobs import events
from ...jobs.queue import Queue
from ...models.registry import Registry
from ...safety.policy import ContentFiltered
from ...store.db import Database
from ...store.files import Files
from ..chat.protocol import ChatRequest
from ..chat.service import ChatService
from .protocol import Evaluation, EvaluationCreate, EvaluationList

MAX_AUTO_PROMPTS = 100  # a comparison attached to a job covers at most this many validation conversations
RATE_LIMIT_PATIENCE = 300.0  # seconds a candidate's answer may wait out 429s before it counts as an error

log = logging.getLogger("tunelab.evaluate")


@dataclass
class ServedCandidates:
    """A comparison's candidates as the service serves them: answers through the chat service, streamed, waiting
    out a deployment's rate limit like a patient client; losses on the engine that serves each."""

    chat: ChatService
    deployments: Deployments
    pool: EnginePool

    async def ask(self, candidate: str, messages: list[dict], spec: Spec) -> Answer:
        request = ChatRequest(model=candidate, messages=messages, temperature=spec.temperature, seed=spec.seed,
                              max_tokens=spec.max_tokens, stream=True, stream_options={"include_usage": True})
        deadline = time.monotonic() + RATE_LIMIT_PATIENCE
        while True:
            try:
                started = time.perf_counter()
                state = await self.chat.begin(request, candidate)
                break
            except RateLimited as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    return Answer("", None, None, 0.0, 0, 0, error=str(exc))
                await asyncio.sleep(exc.retry_after)
            except ContentFiltered:
                return Answer("", "content_filter", None, time.perf_counter() - started, 0, 0)
        text, finish, first = "", None, None
        try:
            async for chunk in self.chat.stream(state, request):
                for choice in chunk.choices:
                    if choice.delta.content:
                        first = first if first is not None else time.perf_counter() - started
                        text += choice.delta.content
                    finish = choice.finish_reason or finish
        except Exception as exc:  # a failed generation is reported with the others, not fatal to the comparison
            return Answer(text, "error", first, time.perf_counter() - started, 0, 0, error=str(exc))
        usage = state.usage()
        return Answer(text, finish, first, time.perf_counter() - started, usage.prompt_tokens,
                      usage.completion_tokens)

    def validation_loss(self, candidate: str, path: Path) -> dict:
        return validation_loss(self.deployments, self.pool, candidate, path)


@dataclass
class EvaluationsService:
    db: Database
    runs: Runs
    files: Files
    queue: Queue
    registry: Registry
    deployments: Deployments
    candidates: ServedCandidates
    settings: Settings
    _tasks: set[asyncio.Task] = field(default_factory=set, init=False)  # running comparisons, held from the GC
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)  # the server's, once it runs

    def create(self, body: EvaluationCreate | dict) -> Evaluation:
        """Check the request, resolve its files, store it and start it (call from the event loop)."""
        body = body.model_dump(exclude_none=False) if isinstance(body, EvaluationCreate) else body
        for name in body["candidates"]:
            if self.deployments.serving(name) is None:
                self.registry.get(name)  # raises model_not_found naming the id
        if len(set(body["candidates"])) != len(body["candidates"]):
            raise InvalidRequest("each candidate may appear once", param="candidates")
        body = {**body, **self._files_of_fine_tunes(body)}
        paths = {key: self.files.path(body[key]) for key in ("validation_file", "style_file") if body.get(key)}
        spec = Spec(candidates=body["candidates"], system=body.get("system"), seed=body["seed"],
                    temperature=body["temperature"], max_tokens=body["max_tokens"],
                    checks=choose(body.get("checks"), self.settings.checks),  # an unknown check: a 400
                    prompts=[Prompt(p.get("id") or f"p{i}", p["messages"], p.get("kind") or "general",
                                    p.get("reference")) for i, p in enumerate(body["prompts"])],
                    validation=paths.get("validation_file"), style=paths.get("style_file"),
                    parallel=body.get("parallel") or 1)
        evaluation_id = f"eval-{secrets.token_hex(8)}"
        total = len(spec.prompts) * len(spec.candidates) + (len(spec.candidates) if spec.validation else 0)
        self.runs.add(evaluation_id, body, total)
        task = asyncio.get_running_loop().create_task(self._run(evaluation_id, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self.get(evaluation_id)

    async def _run(self, evaluation_id: str, spec: Spec) -> None:
        try:
            report = await compare(spec, self.candidates,
                                   lambda done, total: self.runs.progress(evaluation_id, done))
        except Exception as exc:
            log.exception("comparison %s failed", evaluation_id)
            self.runs.failed(evaluation_id, f"{type(exc).__name__}: {exc}")
            return
        self.runs.completed(evaluation_id, report)

    def after_job(self, job_id: str) -> None:
        """From the worker, when a job's training process has ended: if it succeeded with a validation file (and
        `auto_compare` is on), compare the fine-tune with the model it started from on that file — each
        validation conversation up to its last user turn, the reply it holds as the reference."""
        job = self.queue.get(job_id)
        if not self.settings.auto_compare or self.loop is None or job is None or job["status"] != "succeeded":
            return
        request = json.loads(job["request"])
        if not request.get("validation_file"):
            return
        prompts = []
        pairs = request.get("method") == "dpo"  # preference pairs: the prompt, the preferred answer as reference
        for number, line in enumerate(self.files.path(request["validation_file"]).read_text(encoding="utf-8")
                                      .splitlines(), 1):
            row = json.loads(line) if line.strip() else {}
            if pairs and row:
                answer = (row.get("preferred_output") or row.get("preferred_completion"))[0]
                row = {"messages": [*row["input"]["messages"], answer]}
            messages = row.get("messages", [])
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last and messages[last - 1].get("role") == "user":
                plain = [{k: m[k] for k in ("role", "content", "name") if k in m} for m in messages[:last]]
                prompts.append({"id": f"line-{number}", "kind": "validation", "messages": plain,
                                "reference": messages[last].get("content")})
        if not prompts:
            return
        body = {"candidates": [request["model"], job["output_model"]], "prompts": prompts[:MAX_AUTO_PROMPTS],
                "system": None, "seed": 42, "temperature": 0.7, "max_tokens": 256, "checks": None,
                # a DPO job's files are pairs, not chats: the chat files come from the model it started from
                "validation_file": None if pairs else request["validation_file"],
                "style_file": None if pairs else request["training_file"], "job_id": job_id}

        async def start() -> Evaluation:
            return self.create(body)

        created = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=60)
        with self.db.write() as conn:
            events.add_event(conn, job_id, f"Comparing {body['candidates'][1]} with {body['candidates'][0]} on the "
                             f"validation file: evaluation {created.id} (GET /v1/evaluations/{created.id})")

    def get(self, evaluation_id: str) -> Evaluation:
        return Evaluation.of(self.runs.get(evaluation_id))

    def list(self, limit: int = 20, job_id: str | None = None) -> EvaluationList:
        return EvaluationList(data=[Evaluation.of(r) for r in self.runs.list(limit, job_id)], has_more=False)

    def report(self, evaluation_id: str, format: str):
        """The report of a completed comparison: its data, or Markdown or a self-contained HTML page."""
        found = self.get(evaluation_id).model_dump()
        if found["report"] is None:
            raise InvalidRequest(f"the evaluation {evaluation_id} is {found['status']}; its report comes when it "
                                 "completes", param="evaluation_id")
        if format == "markdown":
            return markdown(found)
        return html(found) if format == "html" else found["report"]

    def delete(self, evaluation_id: str) -> dict:
        self.runs.delete(evaluation_id)
        return {"id": evaluation_id, "object": "evaluation.deleted", "deleted": True}

    def _files_of_fine_tunes(self, body: dict) -> dict:
        """Unless given, the style reference is the training file, and the validation file the job's, of the
        first fine-tuned candidate that has them."""
        found = {}
        for name in body["candidates"]:
            served = self.deployments.serving(name)
            model = (served[0]["model"] if served else name).split(":ckpt-step-")[0]
            while model:  # a DPO fine-tune's files are preference pairs: use those of the model it started from
                tuned = self.registry.fine_tuned(model)
                job = self.queue.get(tuned["job_id"]) if tuned and tuned["job_id"] else None
                request = json.loads(job["request"]) if job else {}
                if request.get("method") != "dpo":
                    break
                model = request["model"]
            if job:
                found.setdefault("style_file", request.get("training_file"))
                found.setdefault("validation_file", request.get("validation_file"))
        return {key: body.get(key) or found.get(key) for key in ("style_file", "validation_file")}
