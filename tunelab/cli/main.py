"""The `tunelab` command: models, data check, training, the service and its clients. Errors print as one
readable line, never a traceback.

    tunelab models list
    tunelab data check examples/travel/train.jsonl --validation examples/travel/valid.jsonl
    tunelab train --model SmolLM2-135M-Instruct --train examples/travel/train.jsonl --suffix ft-travel
    tunelab serve
    tunelab jobs create --train examples/travel/train.jsonl --suffix ft-travel --wait
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .. import __version__
from ..config import get_settings
from ..errors import ModelNotFound, TunelabError
from ..store.db import StoreCorrupt
from ..store.home import private_files
from .clean import clean
from .compare import compare
from .export import export
from .lab import lab_app
from .pairs import pairs
from .client import ApiKey, BaseUrl, ServiceUnreachable, chat, delete_service_model, deploy, deployments_app, \
    files_app, jobs_app, list_service_models, parse_auto

app = typer.Typer(help="Fine-tune a chat model on your own examples, on your own machine.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Models: list base and fine-tuned models, import your own, delete fine-tunes.",
                         no_args_is_help=True)
data_app = typer.Typer(help="Training data: the pre-flight check.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deployments_app, name="deployments")
app.add_typer(lab_app, name="lab")
app.command("deploy")(deploy)
app.command("chat")(chat)
app.command("compare")(compare)
app.command("clean")(clean)
app.command("export")(export)
app.command("pairs")(pairs)

out = Console()
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print tunelab's version."""
    out.print(__version__)


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
                base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show base and fine-tuned models from the service; with no service running, the base models on this
    machine."""
    from ..api.models.protocol import Model
    from ..models.catalog import list_models
    from ..models.registry import base_record

    note = None
    try:
        rows = list_service_models(base_url, api_key)
    except ServiceUnreachable as exc:
        if base_url:  # the user named a service: say it is not there
            raise
        rows = [{**Model(**base_record(r)).model_dump(), "install": r["install"]} for r in list_models()]
        note = f"{exc.message.split(';')[0]}: showing the base models on this machine"
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(Column("id", no_wrap=True, min_width=max(len(r["id"]) for r in rows)), "kind", "about")
    for r in rows:
        if r["kind"] == "base":
            installed = "installed" if r.get("installed") else f"not installed — {r.get('install') or 'see the catalog'}"
            about = (f"{r.get('architecture') or 'unknown architecture'}, {r.get('parameters')} parameters, "
                     f"{_context(r.get('context_length'))}, {installed}, chat template: {r.get('chat_template')}, "
                     f"{_fast_paths(r.get('fast_paths'))}")
        else:
            about = f"fine-tuned from {r.get('parent')}"
        table.add_row(r["id"], r["kind"], about)
    out.print(table)
    if note:
        err.print(f"[dim]{escape(note)}[/dim]", soft_wrap=True)


def _context(tokens: int | None) -> str:
    return f"{tokens:,}-token context" if tokens else "context unknown"


def _fast_paths(paths: dict | None) -> str:
    """Which fast paths run the model, and why one steps aside."""
    if not paths:
        return "fast paths unknown"
    running = [name for name in ("training", "decoding") if paths.get(name)]
    said = f"fast paths: {' and '.join(running)}" if running else "no fast path"
    return f"{said} ({paths['note']})" if paths.get("note") else said


@models_app.command("delete")
def models_delete(model_id: str = typer.Argument(..., help="A fine-tuned model id (ft:…)."),
                  base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Delete a fine-tuned model and its weights (base models cannot be deleted)."""
    delete_service_model(model_id, base_url, api_key)
    out.print(f"Deleted {model_id}")


@models_app.command("import")
def models_import(path: Path = typer.Argument(..., help="A Hugging Face safetensors model directory or a .gguf file."),
                  name: str = typer.Option(..., "--name", help="The name to use it by.")) -> None:
    """Import a local model (safetensors directory or GGUF file) into the catalog."""
    from ..models.catalog import import_model

    model = import_model(path, name)
    out.print(f"Imported [bold]{model.name}[/bold] ({model.meta['parameters']} parameters, chat template: "
              f"{model.chat_template_source}) into {model.path}")


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(..., help="Training data: chat-format JSONL, or preference pairs for DPO."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data, same format."),
    model: Optional[str] = typer.Option(None, "--model", help="Tokenize with this model's tokenizer and template "
                                        "[default: SmolLM2-135M-Instruct]."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Pre-flight check: format errors by line, review warnings, token statistics, estimated training time.

    Exits 0 when there are no errors (warnings allowed), 1 otherwise.
    """
    from ..train.preflight import preflight
    from .report_view import print_report

    for path in (file, validation):
        if path is not None and not path.is_file():
            raise TunelabError(f"{path}: no such file", param="file")
    name = model or get_settings().default_model
    note = None
    try:
        report = preflight(file, validation, name)
    except ModelNotFound as exc:
        if model:  # the user asked for this model: say it is missing
            raise
        note = f"token statistics skipped: {exc.message}"
        report = preflight(file, validation, None)
    if as_json:
        out.print_json(json.dumps({**report.to_dict(), "note": note}))
    else:
        print_report(out, report, note)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def train(
    model: str = typer.Option(None, "--model", help="Base model name (see `tunelab models list`) or a model "
                              "directory [default: SmolLM2-135M-Instruct]."),
    train_file: Path = typer.Option(..., "--train", help="Training data, chat-format JSONL (with --dpo: "
                                    "preference pairs)."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data, same format."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Up to 64 letters, digits, '.', '_', '-'."),
    epochs: str = typer.Option("auto", "--epochs", help="'auto' or 1–50."),
    batch_size: str = typer.Option("auto", "--batch-size", help="'auto' or 1–256 conversations per step."),
    learning_rate_multiplier: str = typer.Option("auto", "--learning-rate-multiplier",
                                                 help="'auto' or a factor on the method's base rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fixes data order and initialisation."),
    method: str = typer.Option("lora", "--method", help="lora or full."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank r."),
    early_stopping_patience: Optional[int] = typer.Option(
        None, "--early-stopping-patience", help="Stop once the full validation loss has not improved for N epochs; "
        "the adapter is then the best checkpoint's weights (needs --validation)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: $TUNELAB_HOME/runs/…]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    nproc: int = typer.Option(1, "--nproc", help="Training processes (1–64), under torchrun: each takes its share "
                              "of every batch."),
    dpo: bool = typer.Option(False, "--dpo", help="Preference fine-tuning (DPO) on preference pairs "
                             "(docs/preference.md) instead of supervised fine-tuning."),
    beta: str = typer.Option("auto", "--beta", help="DPO's beta: 'auto' (0.1) or above 0 and at most 2; higher "
                             "stays closer to the starting model."),
    init_adapter: Optional[Path] = typer.Option(None, "--from-adapter", help="Start from this LoRA adapter (a "
                                                "run's adapter/ directory): continued training, e.g. DPO after "
                                                "supervised fine-tuning."),
) -> None:
    """Fine-tune a base model on chat JSONL (or, with --dpo, on preference pairs); writes the adapter,
    results.csv, config and manifest to --out."""
    from ..train.config import parse_config
    from ..train.launch import MAX_PROCESSES, world_size
    from ..train.recipe import run
    from .progress import ConsoleReporter
    from .train_ranks import launch, rank_main

    if resume and out_dir is None:
        raise TunelabError("--resume needs --out naming the run to continue", param="out")
    for path in (train_file, validation):
        if path is not None and not path.is_file():
            raise TunelabError(f"{path}: no such file", param="train" if path == train_file else "validation")
    if early_stopping_patience is not None and validation is None:
        raise TunelabError("--early-stopping-patience watches the validation loss: give --validation too",
                           param="early_stopping_patience")
    config = parse_config(
        early_stopping_patience=early_stopping_patience,
        model=model or get_settings().default_model, train_file=train_file, validation_file=validation,
        suffix=suffix, n_epochs=parse_auto(epochs, int), batch_size=parse_auto(batch_size, int),
        learning_rate_multiplier=parse_auto(learning_rate_multiplier, float), seed=seed, method=method,
        lora_rank=_adapter_rank(init_adapter) if init_adapter else lora_rank, out=out_dir,
        precision=get_settings().train_precision, objective="dpo" if dpo else "supervised",
        beta=parse_auto(beta, float), init_adapter=init_adapter)
    if beta != "auto" and not dpo:
        raise TunelabError("--beta applies to preference fine-tuning: add --dpo", param="beta")
    if world_size() > 1:  # started by a torchrun of the user's (several nodes): this process is one rank
        raise typer.Exit(rank_main(config.model_dump_json(), resume))
    if not 1 <= nproc <= MAX_PROCESSES:
        raise TunelabError(f"--nproc must be from 1 to {MAX_PROCESSES}", param="nproc")
    if nproc > 1:
        raise typer.Exit(launch(config, nproc, resume))
    result = run(config, ConsoleReporter(err), resume=resume)
    if result.stopped_early:
        err.print(f"[yellow]Stopped at step {result.steps}; checkpoint saved.[/yellow] Continue with: "
                  f"tunelab train … --out {result.out} --resume")
        raise typer.Exit(130)
    final = result.metrics
    summary = f"train loss {final.get('train_loss', float('nan')):.3f}"
    if "train_reward_margin" in final:
        summary += f", reward margin {final['train_reward_margin']:.3f}"
    if "full_valid_loss" in final:
        summary += f", validation loss {final['full_valid_loss']:.3f}"
    out.print(f"[green]Done[/green] in {result.steps} steps ({summary}).")
    out.print(f"  adapter:  {result.weights}" if config.method == "lora" else f"  model:    {result.weights}")
    out.print(f"  metrics:  {result.out / 'results.csv'}")
    out.print(f"  manifest: {result.out / 'manifest.json'}")
    if result.recommendation:
        found = result.recommendation
        out.print(f"  use:      {result.out / 'checkpoints' / found['id']} ({found['reason']})", highlight=False)


@app.command()
def serve(host: Optional[str] = typer.Option(None, "--host", help="Address to bind [default: 127.0.0.1]; any "
                                              "other than loopback needs an API key."),
          port: Optional[int] = typer.Option(None, "--port", help="Port [default: 8000].")) -> None:
    """Run the OpenAI-compatible service (files, fine-tuning jobs, models) and its job worker."""
    from ..config import Settings
    from .serve import serve as run_server

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    run_server(Settings(**overrides), out)


def _adapter_rank(adapter: Path) -> int:
    """The LoRA rank of a saved adapter, which a run continuing from it must use."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise TunelabError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)", param="from_adapter")
    return json.loads(config.read_text())["r"]


def main(argv: list[str] | None = None) -> None:
    import warnings

    private_files()  # training data, logs, adapters and the database: readable by their owner only

    from transformers.utils import logging as hf_logging

    # Library chatter (deprecation notices, per-file loading bars) hides tunelab's own progress and report.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*vocabulary was not modified.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        app(args=argv)
    except StoreCorrupt as exc:  # nothing can run on a damaged database: a failure, not a usage error
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except TunelabError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)  # one line
        sys.exit(2)
    except OSError as exc:  # disk full, permissions, a vanished file: say what and where, without a traceback
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] {escape(exc.strerror or str(exc))}{escape(where)}", highlight=False,
                  soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
