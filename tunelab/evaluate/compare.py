"""Comparisons: every prompt through every candidate (deployments or models) with the same system message and
seeded sampling, scored by the checks the caller chose (`checks.choose`; by default every registered one),
plus validation loss, latency and tokens per request.

    spec = Spec(candidates=["base-travel", "ft-travel"], prompts=[Prompt("lab-0", [...])], system="You are …")
    report = await compare(spec, candidates, progress=lambda done, total: ...)

`candidates` (a `Candidates`, which the service provides) answers through the same path as
`POST /v1/chat/completions` (deployments keep their rate limit and content filter; a 429 is waited out, as the SDK
would), streamed, so time to first token is what a client sees. For each
prompt the candidates answer at the same time, so they are measured under the same load. With `parallel` > 1,
up to `parallel` × candidates answers are in flight at once, each starting as soon as any earlier answer ends
(a candidate that answers briefly does not wait for one that rambles), prompts taken in order: faster, and the
latency figures are then those of a shared engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

from starlette.concurrency import run_in_threadpool

from ..data.render import render_chat
from ..deploy.deployments import Deployments
from ..inference.pool import EnginePool
from . import checks as registry
from .checks import Case, StyleCheck


@dataclass
class Prompt:
    id: str
    messages: list[dict]  # the conversation so far, ending with the user's turn; no system message
    kind: str = "general"  # the prompt set's own label; "off_topic" marks requests the assistant should decline
    reference: str | None = None


@dataclass
class Spec:
    candidates: list[str]
    prompts: list[Prompt]
    system: str | None = None
    seed: int = 42
    temperature: float = 0.7
    max_tokens: int = 256
    validation: Path | None = None  # a chat JSONL file: validation loss per candidate
    style: Path | None = None  # a chat JSONL file whose assistant replies define the style to match
    checks: list | None = None  # the checks to run (`checks.choose`); None: every registered one
    parallel: int = 1  # prompts in flight at once


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    ttft_s: float | None
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Candidates(Protocol):
    """How a comparison reaches its candidates (deployment names or model ids)."""

    async def ask(self, candidate: str, messages: list[dict], spec: Spec) -> Answer:
        """One streamed answer, as a client of the service would get it."""

    def validation_loss(self, candidate: str, path: Path) -> dict:
        """See `validation_loss` below."""


async def compare(spec: Spec, candidates: Candidates,
                  progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Run the comparison and return the report (plain data: see `report`)."""
    answers: dict[str, list[Answer]] = {c: [] for c in spec.candidates}
    total = len(spec.prompts) * len(spec.candidates) + (len(spec.candidates) if spec.validation else 0)
    done = 0
    # One slot per prompt (its candidates side by side), or with parallel > 1 one per answer: asyncio's
    # semaphore is first come first served, so answers still start in prompt order.
    pairs = spec.parallel == 1
    slots = asyncio.Semaphore(1 if pairs else spec.parallel * len(spec.candidates))

    async def answer(prompt: Prompt) -> list[Answer]:
        messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + prompt.messages
        if pairs:
            async with slots:
                return await asyncio.gather(*(one(c, messages) for c in spec.candidates))
        return await asyncio.gather(*(one(c, messages, slots) for c in spec.candidates))

    async def one(candidate: str, messages: list[dict], slot: asyncio.Semaphore | None = None) -> Answer:
        nonlocal done
        async with slot or nullcontext():
            got = await candidates.ask(candidate, messages, spec)
        done += 1
        progress(done, total)
        return got

    for results in await asyncio.gather(*(answer(p) for p in spec.prompts)):  # in prompt order
        for candidate, got in zip(spec.candidates, results):
            answers[candidate].append(got)
    losses = {}
    if spec.validation:
        for candidate in spec.candidates:
            losses[candidate] = await run_in_threadpool(candidates.validation_loss, candidate, spec.validation)
            done += 1
            progress(done, total)
    chosen = spec.checks if spec.checks is not None else registry.choose()
    if spec.style:
        chosen = [StyleCheck.from_chat_file(spec.style) if c.name == "style" else c for c in chosen]
    scored = await run_in_threadpool(_score, spec, answers, chosen)
    return report(spec, answers, scored, losses)


def validation_loss(deployments: Deployments, pool: EnginePool, candidate: str, path: Path) -> dict:
    """Mean loss (and perplexity) on the assistant tokens of a chat JSONL file, as training reports it."""
    served = deployments.serving(candidate)
    target = pool.target(served[0]["model"] if served else candidate)
    conversations = [render_chat(target.tokenizer, json.loads(line)["messages"])
                     for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    conversations = [c.truncated(target.engine.context) for c in conversations]
    total, count = target.engine.loss(conversations, target.adapter)
    mean = total / count if count else None
    return {"loss": mean, "perplexity": math.exp(mean) if mean is not None else None, "tokens": count}


def _score(spec: Spec, answers: dict[str, list[Answer]], chosen: list) -> dict[str, list]:
    cases = {candidate: [Case(prompt=p.messages[-1]["content"], answer=a.text, system=spec.system,
                              reference=p.reference, off_topic=p.kind == "off_topic")
                         for p, a in zip(spec.prompts, answers[candidate])] for candidate in spec.candidates}
    return {r.candidate: r for r in registry.run(cases, chosen)}


def report(spec: Spec, answers: dict[str, list[Answer]], scored: dict, losses: dict) -> dict:
    """The comparison as data: per candidate the checks' means, latency, tokens and loss; per prompt the answers
    side by side with their scores; and the verdict."""
    candidates = []
    for name in spec.candidates:
        got = answers[name]
        firsts = [a.ttft_s for a in got if a.ttft_s is not None]
        rates = [a.completion_tokens / (a.seconds - a.ttft_s) for a in got
                 if a.ttft_s is not None and a.completion_tokens > 1 and a.seconds > a.ttft_s]
        candidates.append({
            "name": name,
            "checks": {k: asdict(v) for k, v in scored[name].summary.items()},
            "latency": {"ttft_s_median": _median(firsts), "tokens_per_s_median": _median(rates)},
            "tokens": {"prompt_per_request": _mean([a.prompt_tokens for a in got]),
                       "completion_per_request": _mean([a.completion_tokens for a in got]),
                       "total_per_request": _mean([a.prompt_tokens + a.completion_tokens for a in got])},
            "errors": sum(1 for a in got if a.error),
            "filtered": sum(1 for a in got if a.finish_reason == "content_filter"),
            "validation": losses.get(name),
        })
    prompts = [{"id": p.id, "kind": p.kind, "question": p.messages[-1]["content"], "messages": p.messages,
                "answers": {name: {**asdict(answers[name][i]),
                                   "scores": {k: asdict(s) for k, s in scored[name].scores[i].items()}}
                            for name in spec.candidates}}
               for i, p in enumerate(spec.prompts)]
    return {"settings": {"system": spec.system, "seed": spec.seed, "temperature": spec.temperature,
                         "max_tokens": spec.max_tokens, "prompts": len(spec.prompts), "parallel": spec.parallel},
            "candidates": candidates, "prompts": prompts, "verdict": verdict(candidates)}


def verdict(candidates: list[dict]) -> dict:
    """Which candidate wins each check that has a better direction (and validation loss), and overall."""
    wins: dict[str, list[str]] = {c["name"]: [] for c in candidates}
    lines = []
    names = list(candidates[0]["checks"]) if candidates else []
    for check in names:
        better = candidates[0]["checks"][check]["higher_is_better"]
        values = {c["name"]: c["checks"][check]["mean"] for c in candidates}
        if better is None or any(v is None for v in values.values()) or len(set(values.values())) < 2:
            continue
        best = (max if better else min)(values, key=values.get)
        wins[best].append(check)
        title = candidates[0]["checks"][check]["title"]
        lines.append(f"{title}: {best} ({_figures(values, check)})")
    loss = {c["name"]: (c["validation"] or {}).get("loss") for c in candidates}
    if all(v is not None for v in loss.values()) and len(set(loss.values())) > 1:
        best = min(loss, key=loss.get)
        wins[best].append("validation_loss")
        lines.append(f"Validation loss: {best} ({', '.join(f'{n} {v:.3f}' for n, v in loss.items())})")
    ranked = sorted(wins, key=lambda n: len(wins[n]), reverse=True)
    winner = ranked[0] if ranked and (len(ranked) == 1 or len(wins[ranked[0]]) > len(wins[ranked[1]])) else None
    measured = sum(len(w) for w in wins.values())
    summary = (f"{winner} wins {len(wins[winner])} of {measured} measured comparisons" if winner else
               f"no candidate wins more of the {measured} measured comparisons than the others")
    return {"winner": winner, "wins": wins, "summary": summary, "details": lines}


def _figures(values: dict, check: str) -> str:
    as_share = check in ("policy", "engagement", "redirect")
    return ", ".join(f"{n} {v:.0%}" if as_share else f"{n} {v:.2f}" for n, v in values.items())


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None
