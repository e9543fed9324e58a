"""The pre-flight report: format errors, review warnings, token statistics and the training-time estimate.

    tunelab data check examples/travel/train.jsonl --validation examples/travel/valid.jsonl [--json]

A preference file (DPO pairs) gets the pairs' review (data/preference.py) and the token counts of both sides:
the token statistics then cover every conversation the training runs (prompt + preferred, prompt +
non-preferred), and `pairs` gives the prompt and each answer's lengths and the pairs cut at the context.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing_extensions import TypedDict  # pydantic reads typing's own only from Python 3.12

from ..data.preference import render_pair, review_pairs
from ..data.render import RenderedChat
from ..data.review import review
from ..data.samples import render_examples
from ..data.validate import Problem, Validation, validate_file
from .config import auto_batch_size, auto_epochs

HISTOGRAM_BINS = 10
# Measured training speed over the fp32 matmul speed measured here: 0.6 for the travel run on a Zen 3 (fp32,
# before packing), 0.8 on a Sapphire Rapids Xeon (packed, bf16 base products); in between, so neither is far off.
EFFICIENCY = 0.7


HistogramBin = TypedDict("HistogramBin", {"from": int, "to": int, "count": int})


@dataclass
class TokenStats:
    """Token counts of one file (the API's report carries this type as it is)."""

    examples: int
    total: int
    min: int
    median: float
    p95: int
    max: int
    trained_total: int  # assistant tokens with weight != 0: what the loss covers
    trained_median: float
    histogram: list[HistogramBin]
    over_limit: list[int]  # lines longer than the context, truncated from the end when training
    context_limit: int


class Spread(TypedDict):
    min: int
    mean: float
    max: int


@dataclass
class PairStats:
    """Token counts of a preference file's pairs: the prompt, the preferred and the non-preferred answer."""

    pairs: int
    prompt: Spread
    preferred: Spread
    non_preferred: Spread
    truncated_preferred: list[int]  # lines whose prompt + preferred answer exceed the context (cut from the end)
    truncated_non_preferred: list[int]
    context_limit: int


@dataclass
class FileReport:
    file: str
    examples: int
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    tokens: TokenStats | None = None
    format: str = "chat"  # or "preference"
    pairs: PairStats | None = None


@dataclass
class Report:
    model: str | None
    files: list[FileReport]
    n_epochs: int | None = None
    batch_size: int | None = None
    billed_tokens: int | None = None  # tokens the training processes: Σ min(length, limit) × epochs
    estimated_seconds: float | None = None
    estimate_basis: str | None = None

    @property
    def ok(self) -> bool:
        return not any(f.errors for f in self.files)

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def preflight(train: Path, validation: Path | None = None, model: str | None = None,
              names: tuple[str, str | None] | None = None) -> Report:
    """Check `train` (and `validation`) for errors, warnings and token statistics under `model`'s template.
    `names` are how the report names the two files (default: their paths; the service names uploads by id)."""
    names = names or (str(train), str(validation) if validation else None)
    checked = [validate_file(train, name=names[0])]
    kind = checked[0].format
    if validation:  # in the training file's format, or one error saying so
        checked.append(validate_file(validation, name=names[1], expect=kind, min_examples=1))
    reports = [FileReport(v.file, len(v.examples), errors=[_problem(p) for p in v.errors], format=kind)
               for v in checked]
    check = review_pairs if kind == "preference" else review
    reports[0].warnings = [_problem(p) for p in check(names[0], checked[0].examples,
                                                      (checked[1].file, checked[1].examples) if validation else None)]
    if validation:
        reports[1].warnings = [_problem(p) for p in check(names[1], checked[1].examples)]
        overlap = [w for w in reports[0].warnings if w["rule"] == "train_validation_overlap"]
        reports[0].warnings = [w for w in reports[0].warnings if w not in overlap]
        reports[1].warnings += overlap

    report = Report(model=model, files=reports)
    if model is None:
        return report

    from ..models.catalog import resolve_model
    from ..models.load import load_tokenizer

    base = resolve_model(model)
    tokenizer = load_tokenizer(base.path)
    limit = base.meta.get("context_length") or 2048
    for file_report, v in zip(reports, checked):
        if v.examples and kind == "preference":
            rendered = [render_pair(tokenizer, e) for e in v.examples]
            file_report.tokens = _token_stats(v, [c for pair in rendered for c in pair], limit,
                                              [e.line for e in v.examples for _ in (0, 1)])
            file_report.pairs = _pair_stats(v, rendered, limit)
        elif v.examples:
            file_report.tokens = _token_stats(v, render_examples(v.examples, tokenizer), limit)

    stats = reports[0].tokens
    if stats and reports[0].examples:
        auto = auto_hyperparameters(reports[0].examples)
        report.n_epochs, report.batch_size = auto["n_epochs"], auto["batch_size"]
        report.billed_tokens = stats.total * report.n_epochs
        valid_tokens = reports[1].tokens.total if validation and reports[1].tokens else 0
        report.estimated_seconds, report.estimate_basis = _estimate_seconds(
            base, stats, report.n_epochs, valid_tokens)
    return report


def auto_hyperparameters(n_examples: int) -> dict:
    """What `"auto"` resolves to for a training file of `n_examples` conversations (train/config.py's rule)."""
    return {"n_epochs": auto_epochs(n_examples), "batch_size": min(auto_batch_size(n_examples), n_examples),
            "learning_rate_multiplier": 1.0}


def _token_stats(validation: Validation, chats: list[RenderedChat], limit: int,
                 lines: list[int] | None = None) -> TokenStats:
    """Over `chats`, one per example (or two per pair: `lines` then names each chat's line)."""
    lengths = [len(c.input_ids) for c in chats]
    trained = [c.trained_tokens for c in chats]
    lines = lines or [e.line for e in validation.examples]
    over = sorted({line for line, n in zip(lines, lengths) if n > limit})
    ordered = sorted(lengths)
    return TokenStats(
        examples=len(lengths), total=sum(min(n, limit) for n in lengths), min=ordered[0],
        median=statistics.median(ordered), p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        max=ordered[-1], trained_total=sum(trained), trained_median=statistics.median(trained),
        histogram=_histogram(ordered), over_limit=over, context_limit=limit,
    )


def _pair_stats(validation: Validation, rendered: list[tuple[RenderedChat, RenderedChat]], limit: int) -> PairStats:
    def spread(values: list[int]) -> Spread:
        return {"min": min(values), "mean": round(statistics.mean(values), 1), "max": max(values)}

    lines = [e.line for e in validation.examples]
    preferred = [c.trained_tokens for c, _ in rendered]
    non_preferred = [r.trained_tokens for _, r in rendered]
    prompt = [len(c.input_ids) - c.trained_tokens for c, _ in rendered]
    return PairStats(
        pairs=len(rendered), prompt=spread(prompt), preferred=spread(preferred), non_preferred=spread(non_preferred),
        truncated_preferred=[line for line, (c, _) in zip(lines, rendered) if len(c.input_ids) > limit],
        truncated_non_preferred=[line for line, (_, r) in zip(lines, rendered) if len(r.input_ids) > limit],
        context_limit=limit)


def _histogram(ordered: list[int]) -> list[dict]:
    low, high = ordered[0], ordered[-1]
    width = max(1, -(-(high - low + 1) // HISTOGRAM_BINS))
    bins = [{"from": low + i * width, "to": low + (i + 1) * width - 1, "count": 0} for i in range(HISTOGRAM_BINS)]
    for n in ordered:
        bins[min((n - low) // width, HISTOGRAM_BINS - 1)]["count"] += 1
    return [b for b in bins if b["from"] <= high]


def _estimate_seconds(base, stats: TokenStats, epochs: int, valid_tokens: int) -> tuple[float, str]:
    """FLOPs per trained token (LoRA: forward + input-gradient pass ≈ 4 N, plus the LM head at trained positions)
    over this machine's measured fp32 matmul speed."""
    config = json.loads((base.path / "config.json").read_text())
    hidden, vocab, layers = config.get("hidden_size", 0), config.get("vocab_size", 0), config.get("num_hidden_layers", 0)
    params = base.meta.get("parameter_count") or 0
    non_embedding = max(0, params - vocab * hidden)
    label_share = stats.trained_total / max(1, stats.total)
    attention = 6 * layers * hidden * stats.median
    per_token = 4 * non_embedding + 4 * vocab * hidden * label_share + attention
    flops = per_token * stats.total * epochs + (2 * non_embedding + attention / 3) * valid_tokens * (epochs + 5)
    speed = _matmul_flops_per_second()
    return flops / (speed * EFFICIENCY), f"{per_token / 1e6:.0f} MFLOP per token at {speed / 1e9:.0f} GFLOP/s measured"


def _matmul_flops_per_second() -> float:
    import torch

    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    a @ b
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < 0.3:
        a @ b
        runs += 1
    return 2 * 512 * 576 * 1536 * runs / (time.perf_counter() - started)


def _problem(p: Problem) -> dict:
    return {"file": p.file, "line": p.line, "rule": p.rule, "message": p.message}
