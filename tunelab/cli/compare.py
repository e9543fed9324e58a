"""`tunelab compare`: run a prompt set through deployments or models on the service and report which serves
better, with the numbers behind it.

    tunelab compare --prompts examples/travel/prompts.jsonl --system "You are …" base-travel ft-travel
    tunelab compare --checks policy --checks engagement …   # only these of the service's checks
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import InvalidRequest, TunelabError
from ..evaluate.render import html, markdown, rows
from .client import ApiKey, AsJson, BaseUrl, _file_id, _once, _print_json, api_errors, client, out

MAX_PROMPTS = 500


def read_prompts(path: Path) -> list[dict]:
    """A JSONL prompt set: `{"id", "kind", "messages": [...], "reference"}` per line, or `{"prompt": "..."}`."""
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file", param="--prompts")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}, line {number}: not valid JSON ({exc.msg})", param="--prompts") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            row = {**{k: v for k, v in row.items() if k != "prompt"},
                   "messages": [{"role": "user", "content": row["prompt"]}]}
        if not (isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]):
            raise InvalidRequest(f"{path}, line {number}: expected an object with \"messages\" (a list ending with "
                                 "the user's turn) or \"prompt\" (a string)", param="--prompts")
        prompts.append({k: row[k] for k in ("id", "kind", "messages", "reference") if k in row})
    if not prompts:
        raise InvalidRequest(f"{path} holds no prompts", param="--prompts")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"{path} holds {len(prompts)} prompts; at most {MAX_PROMPTS} per comparison",
                             param="--prompts")
    return prompts


def compare(
    candidates: List[str] = typer.Argument(..., help="Deployments or model ids to compare (1–4)."),
    prompts: Path = typer.Option(..., "--prompts", help="JSONL prompt set: {id, kind, messages, reference} or "
                                 "{prompt} per line; kind off_topic is scored by the redirect check."),
    system: Optional[str] = typer.Option(None, "--system", help="The system message for every prompt."),
    seed: int = typer.Option(42, "--seed", help="Sampling seed (the same for every candidate)."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer, in tokens."),
    parallel: int = typer.Option(1, "--parallel", help="Prompts answered at once (1–8); above 1 is faster, and "
                                 "latency is then measured on a shared engine."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Chat .jsonl (or file id) for validation "
                                             "loss; default: the fine-tuned candidate's job's."),
    style: Optional[str] = typer.Option(None, "--style", help="Chat .jsonl (or file id) whose replies define the "
                                        "style; default: the fine-tuned candidate's training file."),
    report_dir: Path = typer.Option(Path("reports"), "--out", help="Where report.html, report.md and report.json "
                                    "are written (in a folder named after the comparison)."),
    checks: Optional[List[str]] = typer.Option(None, "--checks", help="Run only this check of the service's "
                                               "(repeatable): its name, or the module:name the service loaded "
                                               "through TUNELAB_CHECKS."),
    base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Compare candidates on a prompt set: the service's checks (engagement, style, reference, length, and those
    it registers; --checks picks some), validation loss, latency and tokens per request, with a verdict; writes
    HTML, Markdown and JSON reports."""
    body = {"candidates": candidates, "prompts": read_prompts(prompts), "system": system, "seed": seed,
            "temperature": temperature, "max_tokens": max_tokens, "parallel": parallel, "checks": checks or None}
    api = client(base_url, api_key)
    try:
        with api_errors(base_url):
            if validation:
                body["validation_file"] = _file_id(api, validation, "--validation")
            if style:
                body["style_file"] = _file_id(api, style, "--style")
            evaluation = api.post("/evaluations", body=body, cast_to=object, options={"headers": _once()})
    except TunelabError as exc:  # the service names its field; the user typed the option
        if exc.param != "checks":
            raise
        raise InvalidRequest(f"--checks: {exc.message.removeprefix('checks: ')}", param="--checks") from None
    with api_errors(base_url):
        progress = Progress(TextColumn("[bold]Comparing"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("answers"), TimeElapsedColumn(), transient=True)
        with progress:
            task = progress.add_task("compare", total=evaluation["progress"]["total"])
            while evaluation["status"] == "running":
                time.sleep(0.5)
                evaluation = api.get(f"/evaluations/{evaluation['id']}", cast_to=object)
                progress.update(task, completed=evaluation["progress"]["done"])
    if evaluation["status"] == "failed":
        raise InvalidRequest(f"the comparison {evaluation['id']} failed: {evaluation['error']}")
    folder = report_dir / evaluation["id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(evaluation["report"], indent=2), encoding="utf-8")
    (folder / "report.md").write_text(markdown(evaluation), encoding="utf-8")
    (folder / "report.html").write_text(html(evaluation), encoding="utf-8")
    if as_json:
        return _print_json(evaluation["report"])
    names = [c["name"] for c in evaluation["report"]["candidates"]]
    table = Table("", *names, title=f"Comparison {evaluation['id']}")
    for label, direction, values in rows(evaluation):
        table.add_row(f"{label}\n[dim]{direction}[/dim]" if direction else label, *values)
    out.print(table)
    out.print(f"[bold]Verdict:[/bold] {evaluation['report']['verdict']['summary']}", highlight=False)
    for line in evaluation["report"]["verdict"]["details"]:
        out.print(f"  {line}", highlight=False)
    out.print(f"Reports: {folder / 'report.html'} (also report.md, report.json)", highlight=False)
