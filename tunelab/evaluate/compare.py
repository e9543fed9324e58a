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
from .render import figure
from .stats import mean_difference, mean_interval, means_to_settle, prompts_to_settle, rate_difference, wilson


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
    values = {name: _values(scored[name]) for name in spec.candidates}
    for name in spec.candidates:
        got = answers[name]
        firsts = [a.ttft_s for a in got if a.ttft_s is not None]
        rates = [a.completion_tokens / (a.seconds - a.ttft_s) for a in got
                 if a.ttft_s is not None and a.completion_tokens > 1 and a.seconds > a.ttft_s]
        candidates.append({
            "name": name,
            "checks": {k: {**asdict(v), **_interval(values[name][k])} for k, v in scored[name].summary.items()},
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
            "candidates": candidates, "prompts": prompts,
            "verdict": verdict(candidates, prompts=len(spec.prompts), values=values)}


def _values(scored) -> dict[str, list]:
    """Per check, the values of the answers it applied to (booleans stay booleans: they make a rate)."""
    found: dict[str, list] = {check: [] for check in scored.summary}
    for scores in scored.scores:
        for check, score in scores.items():
            if score.value is not None:
                found[check].append(score.value)
    return found


def _interval(values: list) -> dict:
    """A check's kind (a rate of yes/no answers, or a mean of numbers) with its 95% interval: Wilson's for a rate,
    the normal interval of the mean otherwise (stats.py)."""
    rate = bool(values) and all(isinstance(v, bool) for v in values)
    found = wilson(sum(values), len(values)) if rate else mean_interval(values)
    return {"kind": "rate" if rate else "mean", "interval": {"low": found.low, "high": found.high, "n": found.n}}


def verdict(candidates: list[dict], prompts: int | None = None, values: dict | None = None) -> dict:
    """Which candidate wins each check that has a better direction, and overall, only where the difference holds
    beyond the noise at 95% (stats.py).

    A check has a winner when its best candidate is settled ahead of every other; candidates the best is not
    settled ahead of are "tied within noise" with it; when all are, the check has no clear winner, and the line
    says about how many prompts would settle the best against the runner-up at the values seen. The overall
    winner wins at least one check that way and is settled behind on none. Rates are compared from their shares
    and counts; means need the values themselves (`values[candidate][check]`). Validation loss is token-weighted
    over one file, with no interval: it is reported beside the checks and in `wins`, as before, but never decides
    the overall winner."""
    wins: dict[str, list[str]] = {c["name"]: [] for c in candidates}
    settled_wins: dict[str, list[str]] = {c["name"]: [] for c in candidates}
    losses: dict[str, list[str]] = {c["name"]: [] for c in candidates}
    lines, per_check, settled = [], {}, []  # settled: what holds beyond the noise, for the summary
    names = list(candidates[0]["checks"]) if candidates else []
    values = values or {}
    measured = 0
    for check in names:
        first = candidates[0]["checks"][check]
        better = first["higher_is_better"]
        means = {c["name"]: c["checks"][check]["mean"] for c in candidates}
        if better is None or len(candidates) < 2 or any(v is None for v in means.values()):
            continue
        samples = {c["name"]: _sample(c, check, values) for c in candidates}
        if any(sample is None for sample in samples.values()):
            continue
        measured += 1
        order = sorted(means, key=means.get, reverse=better)  # best first
        best = order[0]
        ahead = {other: _difference(samples[best], samples[other], better) for other in order[1:]}
        tied = [best] + [o for o in order[1:] if not ahead[o].settled]
        for a in order:  # every settled pair: who is behind on what, for the overall rule
            for b in order:
                if a != b and _difference(samples[a], samples[b], better).settled and \
                        ((means[a] > means[b]) == bool(better)) and check not in losses[b]:
                    losses[b].append(check)
        n = max(sample["n"] for sample in samples.values())
        figures = _figures(candidates, check)
        title = first["title"]
        settle = None
        if len(tied) == 1:
            wins[best].append(check)
            settled_wins[best].append(check)
            lines.append(f"{title}: {best} ({figures})")
            settled.append(f"{best} ahead on {title}")
            outcome = {"winner": best, "tied": tied}
        else:
            runner_up = tied[1]
            settle = _to_settle(samples[best], samples[runner_up])
            more = (f"; about {settle} prompts per candidate would settle {best} against {runner_up} at the "
                    f"{'rates' if samples[best]['kind'] == 'rate' else 'values'} seen" if settle else "")
            behind = [o for o in order if o not in tied]
            if behind:
                settled.append(f"{' and '.join(tied)} ahead of {', '.join(behind)} on {title}")
                lines.append(f"{title}: {' and '.join(tied)} tied within noise, ahead of {', '.join(behind)} "
                             f"({figures}){more}")
            else:
                lines.append(f"{title}: no clear winner on {n} prompts ({figures}){more}")
            outcome = {"winner": None, "tied": tied}
        per_check[check] = {**outcome, "n": n, "prompts_to_settle": settle}
    loss = {c["name"]: (c.get("validation") or {}).get("loss") for c in candidates}
    if all(v is not None for v in loss.values()) and len(set(loss.values())) > 1:
        best = min(loss, key=loss.get)
        wins[best].append("validation_loss")
        tokens = {(c.get("validation") or {}).get("tokens") for c in candidates} - {None}
        over = f" over {max(tokens):,} tokens" if tokens else ""
        lines.append(f"Validation loss (token-weighted{over}, no interval; not part of the verdict): lowest {best} "
                     f"({', '.join(f'{n} {v:.3f}' for n, v in loss.items())})")
    count = prompts if prompts is not None else max(
        [c["checks"][k].get("interval", {}).get("n") or c["checks"][k].get("count") or 0
         for c in candidates for k in names] or [0])
    winner = next((name for name in settled_wins if settled_wins[name] and not losses[name]), None)
    titles = {k: candidates[0]["checks"][k]["title"] for k in names}
    if winner:
        summary = (f"{winner} is the clear winner on {count} prompts: ahead of every other candidate beyond the "
                   f"noise on {len(settled_wins[winner])} of {measured} checks "
                   f"({', '.join(titles[k] for k in settled_wins[winner])}) and behind on none")
    elif len(candidates) == 1:
        summary = f"{candidates[0]['name']} alone on {count} prompts: no other candidate to compare it with"
    else:
        summary = f"no clear winner on {count} prompts"
        if settled:
            summary += f" ({'; '.join(settled)}; the rest within the noise)"
        elif measured:
            summary += " (every difference is within the noise)"
    return {"winner": winner, "wins": wins, "summary": summary, "details": lines, "prompts": count,
            "checks": per_check}


def _sample(candidate: dict, check: str, values: dict) -> dict | None:
    """What a difference needs: successes and n for a rate, the values for a mean; None when it cannot be had."""
    summary = candidate["checks"][check]
    kind = summary.get("kind")
    n = (summary.get("interval") or {}).get("n", summary.get("count"))
    if kind == "rate" and n:
        return {"kind": "rate", "successes": round(summary["mean"] * n), "n": n}
    found = (values.get(candidate["name"]) or {}).get(check)
    if found is not None and len(found) >= 2:
        return {"kind": "mean", "values": [float(v) for v in found], "n": len(found)}
    return None


def _difference(a: dict, b: dict, higher_is_better: bool):
    """`a − b` (or `b − a` when lower is better) with its 95% interval: settled when it excludes zero."""
    first, second = (a, b) if higher_is_better else (b, a)
    if a["kind"] == "rate" and b["kind"] == "rate":
        return rate_difference(first["successes"], first["n"], second["successes"], second["n"])
    return mean_difference(_as_values(first), _as_values(second))


def _as_values(sample: dict) -> list[float]:
    if sample["kind"] == "mean":
        return sample["values"]
    return [1.0] * sample["successes"] + [0.0] * (sample["n"] - sample["successes"])


def _to_settle(a: dict, b: dict) -> int | None:
    if a["kind"] == "rate" and b["kind"] == "rate":
        return prompts_to_settle(a["successes"] / a["n"], b["successes"] / b["n"])
    return means_to_settle(_as_values(a), _as_values(b))


def _figures(candidates: list[dict], check: str) -> str:
    return ", ".join(f"{c['name']} {figure(c['checks'][check], check)}" for c in candidates)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None
