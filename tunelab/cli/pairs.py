"""`tunelab pairs`: preference pairs from comparisons on the service — a failing answer as non-preferred beside a
passing answer to the same prompt as preferred — written as a preference JSONL file for a DPO job.

    tunelab pairs eval-… eval-… --out pairs.jsonl --checks policy,engagement --max-per-prompt 2 --upload
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import InvalidRequest, TunelabError
from .client import ApiKey, AsJson, BaseUrl, _print_json, api_errors, client, out

OPTIONS = {"checks": "--checks", "max_per_prompt": "--max-per-prompt"}  # the service's fields the user typed


def pairs(
    evaluations: List[str] = typer.Argument(..., help="Completed comparisons (eval-…) over the same prompts; "
                                            "several (e.g. several seeds) pool their answers per prompt."),
    out_path: Path = typer.Option(..., "--out", help="The preference JSONL file to write."),
    checks: Optional[str] = typer.Option(None, "--checks", help="Comma-separated yes/no checks that judge an answer "
                                         "[default: every one of the comparison with a better direction]."),
    max_per_prompt: Optional[int] = typer.Option(None, "--max-per-prompt", help="At most this many pairs per "
                                                 "prompt [default: one per failing answer]."),
    upload: bool = typer.Option(False, "--upload", help="Also save the pairs on the service as a training file "
                                "(purpose fine-tune) and print its id."),
    base_url: BaseUrl = None, api_key: ApiKey = None, as_json: AsJson = False,
) -> None:
    """Make preference pairs from comparisons: for each prompt, an answer that fails a check (non-preferred)
    beside one that passes them all (preferred); prints how many prompts gave a pair and which checks failed."""
    problems = []
    if max_per_prompt is not None and max_per_prompt < 1:
        problems.append("--max-per-prompt: at least 1")
    chosen = [c.strip() for c in checks.split(",") if c.strip()] if checks is not None else None
    if checks is not None and not chosen:
        problems.append("--checks: name at least one check, e.g. --checks policy,engagement")
    if out_path.is_dir():
        problems.append(f"--out: {out_path} is a folder; name the .jsonl file to write")
    elif not out_path.parent.is_dir():
        problems.append(f"--out: the folder {out_path.parent} does not exist")
    if problems:
        raise InvalidRequest("; ".join(problems), param=problems[0].split(":")[0])
    body = {"evaluations": evaluations, "checks": chosen, "max_per_prompt": max_per_prompt, "save": upload,
            "filename": out_path.name if out_path.suffix.lower() == ".jsonl" else f"{out_path.name}.jsonl"}
    try:
        with api_errors(base_url):
            mined = client(base_url, api_key).post("/pairs", body=body, cast_to=object)
    except TunelabError as exc:  # the service names its field; the user typed the option
        option = OPTIONS.get((exc.param or "").split("[")[0].split(".")[0])
        if not option or exc.message.startswith(option):
            raise
        raise type(exc)(f"{option}: {exc.message.removeprefix(f'{exc.param}: ')}", param=option) from None
    lines = "".join(_line(p["row"]) for p in mined["data"])
    partial = out_path.with_name(f".{out_path.name}.partial")
    partial.write_text(lines, encoding="utf-8")
    partial.replace(out_path)  # written beside, then renamed: never half a file under the name
    if as_json:
        return _print_json(mined)
    summary = mined["summary"]
    table = Table("", "", title="Preference pairs", show_header=False)
    table.add_row("Prompts", str(summary["prompts"]))
    table.add_row("Prompts with a passing answer", str(summary["prompts_with_passing"]))
    table.add_row("Prompts with a failing answer", str(summary["prompts_with_failing"]))
    table.add_row("Prompts with a pair", str(summary["prompts_with_pair"]))
    table.add_row("Pairs", str(summary["pairs"]) + (f" ({summary['capped']} more left out by --max-per-prompt)"
                                                    if summary["capped"] else ""))
    left_out = ", ".join(f"{n} {why}" for why, n in summary["excluded"].items() if n)
    table.add_row("Answers left out", left_out or "none")
    for check, count in summary["failures"].items():
        table.add_row(f"Non-preferred failing {check}", str(count))
    out.print(table)
    if summary.get("preferred_cut_off"):  # a service from before the count has none
        out.print(f"[yellow]{summary['preferred_cut_off']} preferred answers were cut off at the comparison's max "
                  "tokens: trained as preferred they teach stopping mid-sentence; finish or drop them (the studio's "
                  "review), or compare again with a larger --max-tokens[/yellow]", highlight=False)
    out.print(f"Wrote {summary['pairs']} pairs to {out_path}", highlight=False)
    if mined.get("file"):
        out.print(f"Uploaded as [bold]{mined['file']['id']}[/bold] ({mined['file']['filename']}), a training file "
                  "for a preference (DPO) fine-tune", highlight=False)


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"
