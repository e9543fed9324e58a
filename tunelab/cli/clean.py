"""`tunelab clean`: delete what the service holds, in dependency order, after showing what goes and the disk freed.

    tunelab clean --all --yes              # everything but the base models
    tunelab clean --deployments            # a selection; asks before deleting

Order: deployments → exports → fine-tuned models → jobs (their checkpoints and run directories) → files (result
files, then uploads) → comparisons → stored chat completions → evals. A finished export depends on nothing (its model may go before or after it);
exports go before the models because a running one reads its model's weights. Every deletion goes through the
service's API; one that is refused (a deployed model, a running job or export) is reported with the reason, never
skipped silently, and the command then exits 1.
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from ..errors import InvalidRequest, TunelabError
from .client import ApiKey, BaseUrl, api_errors, client, err, out

KINDS = ("deployments", "exports", "models", "jobs", "files", "evaluations", "stored_completions", "evals")


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"


def plan(storage: dict, kinds: set[str]) -> list[tuple[str, str, str, int]]:
    """(kind, id, description, bytes) for everything to delete, in the order it must go."""
    steps = []
    if "deployments" in kinds:
        steps += [("deployment", d["name"], d["model"], 0) for d in storage["deployments"]]
    if "exports" in kinds:
        steps += [("export", e["id"], described(e), e["bytes"]) for e in storage["exports"]]
    if "models" in kinds:
        steps += [("model", m["id"], "fine-tuned model", m["bytes"]) for m in storage["models"]]
    if "jobs" in kinds:
        steps += [("job", j["id"], f"{j['status']}, {j['checkpoints']} checkpoints, run directory", j["bytes"])
                  for j in storage["jobs"]]
    if "files" in kinds:
        ordered = sorted(storage["files"], key=lambda f: f["purpose"] != "fine-tune-results")  # results first
        steps += [("file", f["id"], f"{f['filename']} ({f['purpose']})", f["bytes"]) for f in ordered]
    if "evaluations" in kinds:
        steps += [("evaluation", e["id"], f"comparison ({e['status']})", 0) for e in storage["evaluations"]]
    if "stored_completions" in kinds:
        steps += [("stored completion", c["id"], c["model"], 0) for c in storage["stored_completions"]]
    if "evals" in kinds:
        steps += [("eval", e["id"], f"{e['name']} ({e['runs']} runs)", 0) for e in storage["evals"]]
    return steps


def described(export: dict) -> str:
    """An export in a few words: "gguf q8_0 + Modelfile of ft:… (succeeded, 2 files)"."""
    what = export["format"] + (f" {export['quantization']}" if export["quantization"] else "")
    what += " + Modelfile" if export["ollama"] else ""
    count = f"{export['files']} file{'' if export['files'] == 1 else 's'}"
    return f"{what} of {export['model']} ({export['status']}, {count})"


ROUTES = {"deployment": "/deployments/{}", "export": "/exports/{}", "model": "/models/{}",
          "job": "/fine_tuning/jobs/{}", "file": "/files/{}", "evaluation": "/evaluations/{}",
          "stored completion": "/chat/completions/{}", "eval": "/evals/{}"}


def clean(
    everything: bool = typer.Option(False, "--all", help="Delete everything but the base models."),
    deployments: bool = typer.Option(False, "--deployments", help="Delete the deployments."),
    exports: bool = typer.Option(False, "--exports", help="Delete finished exports with their files (a running one "
                                 "is refused: wait for it to finish)."),
    models: bool = typer.Option(False, "--models", help="Delete the fine-tuned models (deployments first)."),
    jobs: bool = typer.Option(False, "--jobs", help="Delete finished jobs with their checkpoints and run "
                              "directories (their models first)."),
    files: bool = typer.Option(False, "--files", help="Delete uploaded and result files."),
    evaluations: bool = typer.Option(False, "--evaluations", help="Delete stored comparisons."),
    stored_completions: bool = typer.Option(False, "--stored-completions", help="Delete stored chat completions "
                                            "(with their ratings and edits)."),
    evals: bool = typer.Option(False, "--evals", help="Delete evals with their runs and output items."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting."),
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Show what the service holds and delete all of it (--all) or a selection, in dependency order."""
    chosen = {k for k, on in zip(KINDS, (deployments, exports, models, jobs, files, evaluations,
                                             stored_completions, evals)) if on or everything}
    api = client(base_url, api_key)
    with api_errors(base_url):
        storage = api.get("/storage", cast_to=object)
    steps = plan(storage, chosen)
    _show(storage, steps, chosen)
    if not chosen:
        out.print("Nothing selected: pass --all or a selection (--deployments, --exports, --models, --jobs, "
                  "--files, --evaluations, --stored-completions, --evals).")
        return
    if not steps:
        out.print("Nothing to delete.")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidRequest("not deleting without confirmation: pass --yes", param="--yes")
        typer.confirm(f"Delete these {len(steps)} items?", abort=True)
    failed = []
    for kind, ident, _, _ in steps:
        try:
            with api_errors(base_url):
                api.delete(ROUTES[kind].format(ident), cast_to=object)
            out.print(f"Deleted {kind} {ident}", highlight=False)
        except TunelabError as exc:  # the service's refusal (or absence): reported with the others below
            failed.append((kind, ident, str(exc)))
            err.print(f"[red]Not deleted[/red] {kind} {ident}: {exc}", highlight=False)
    freed = sum(b for kind, ident, _, b in steps if (kind, ident) not in {(k, i) for k, i, _ in failed})
    with api_errors(base_url):  # deleted rows linger in the database's free pages until it is rewritten
        compacted = api.post("/storage/compact", cast_to=object)
    freed += max(0, compacted["database_bytes_before"] - compacted["database_bytes"])
    out.print(f"Freed {size(freed)}. Base models kept: "
              f"{', '.join(m['name'] for m in storage['base_models']) or 'none'}; the state database is compacted "
              f"to {size(compacted['database_bytes'])}.", highlight=False)
    if failed:
        err.print(f"{len(failed)} of {len(steps)} items were not deleted (see above).")
        raise typer.Exit(1)


def _show(storage: dict, steps: list, chosen: set[str]) -> None:
    table = Table("what", "id", "", "disk", title="To delete" if steps else "The service holds")
    rows = steps or plan(storage, set(KINDS))
    for kind, ident, description, bytes_ in rows:
        table.add_row(kind, ident, description, size(bytes_) if bytes_ else "")
    if rows:
        out.print(table)
    total = sum(r[3] for r in rows)
    out.print(f"{'To free' if steps else 'Removable'}: {size(total)}; base models kept: "
              f"{size(sum(m['bytes'] for m in storage['base_models']))}", highlight=False)
