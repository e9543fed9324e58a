"""Draw the pre-flight report on a terminal: errors by line, warnings, token histogram, estimate, verdict."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from ..train.preflight import Report

SHOWN_ERRORS = 50


def print_report(console: Console, report: Report, note: str | None = None) -> None:
    for f in report.files:
        kind = "preference pair(s)" if f.format == "preference" else "example(s)"
        console.rule(f"[bold]{f.file}[/bold] — {f.examples} valid {kind}")
        for e in f.errors[:SHOWN_ERRORS]:
            where = f"line {e['line']}" if e["line"] else "file"
            console.print(f"[red]error[/red] {where} {_finding(e)}", highlight=False, soft_wrap=True)
        if len(f.errors) > SHOWN_ERRORS:
            console.print(f"[red]… and {len(f.errors) - SHOWN_ERRORS} more errors[/red] (--json lists all)")
        for w in f.warnings:
            where = f"line {w['line']} " if w["line"] else ""
            console.print(f"[yellow]warning[/yellow] {where}{_finding(w)}", highlight=False, soft_wrap=True)
        if f.tokens:
            t = f.tokens
            console.print(f"tokens per example: min {t.min} · median {t.median:.0f} · p95 {t.p95} · max {t.max} · "
                          f"total {t.total:,}; trained (assistant) tokens {t.trained_total:,} "
                          f"(median {t.trained_median:.0f} per example)")
            peak = max(b["count"] for b in t.histogram) or 1
            for b in t.histogram:
                bar = "█" * round(30 * b["count"] / peak)
                console.print(f"  {b['from']:>6}–{b['to']:<6} {bar} {b['count']}", highlight=False, soft_wrap=True)
            if f.pairs:
                _print_pairs(console, f.pairs)
            if t.over_limit:
                console.print(f"[yellow]warning[/yellow] {len(t.over_limit)} example(s) exceed the "
                              f"{t.context_limit}-token context and will be truncated from the end (lines "
                              f"{', '.join(map(str, t.over_limit[:10]))})", soft_wrap=True)
    if note:
        console.print(f"[yellow]note[/yellow] {note}")
    if report.estimated_seconds is not None:
        minutes = report.estimated_seconds / 60
        console.rule("[bold]Training estimate[/bold]")
        console.print(f"with {report.model}, auto settings: {report.n_epochs} epochs, batch size "
                      f"{report.batch_size}; {report.billed_tokens:,} tokens to train; about "
                      f"{minutes:.0f} min on this machine (LoRA; {report.estimate_basis})")
    errors = sum(len(f.errors) for f in report.files)
    warnings = sum(len(f.warnings) for f in report.files)
    if errors:
        console.print(f"[red bold]✗ {errors} error(s)[/red bold], {warnings} warning(s): fix the errors before "
                      "training.")
    else:
        console.print(f"[green bold]✓ ready to train[/green bold] ({warnings} warning(s))")


def _print_pairs(console: Console, pairs) -> None:
    for label, spread in (("prompt", pairs.prompt), ("preferred answer", pairs.preferred),
                          ("non-preferred answer", pairs.non_preferred)):
        console.print(f"  {label} tokens: min {spread['min']} · mean {spread['mean']:.0f} · max {spread['max']}",
                      highlight=False)
    for label, lines in (("preferred", pairs.truncated_preferred), ("non-preferred", pairs.truncated_non_preferred)):
        if lines:
            console.print(f"[yellow]warning[/yellow] {len(lines)} pair(s) with the {label} side over the "
                          f"{pairs.context_limit}-token context: the answer is cut from the end (lines "
                          f"{', '.join(map(str, lines[:10]))})", soft_wrap=True)


def _finding(problem: dict) -> str:
    """`[rule] message`, escaped so rich prints the brackets instead of reading them as markup."""
    return escape(f"[{problem['rule']}] {problem['message']}")
