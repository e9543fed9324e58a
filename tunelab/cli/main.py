"""The `tunelab` command: models, data check and training. Errors print as one readable line, never a traceback.

    tunelab models list
    tunelab data check examples/travel/train.jsonl --validation examples/travel/valid.jsonl
    tunelab train --model SmolLM2-135M-Instruct --train examples/travel/train.jsonl --suffix ft-travel
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

app = typer.Typer(help="Fine-tune a chat model on your own examples, on your own machine.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Base models: list the catalog, import your own.", no_args_is_help=True)
data_app = typer.Typer(help="Training data: the pre-flight check.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print tunelab's version."""
    out.print(__version__)


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON for programs.")) -> None:
    """Show the base models: parameters, source, installed or not, chat template."""
    from ..models.catalog import list_models

    rows = list_models()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(Column("name", no_wrap=True), "parameters", "source", "installed", "chat template")
    for r in rows:
        installed = ("yes" + ("" if r["converted"] else " (converted on first use)")) if r["installed"] \
            else f"no — {r['install']}"
        table.add_row(r["name"], r["parameters"], r["source"], installed, r["chat_template"])
    out.print(table)


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
    file: Path = typer.Argument(..., help="Training data, chat-format JSONL."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data, same format."),
    model: Optional[str] = typer.Option(None, "--model", help="Tokenize with this model's tokenizer and template "
                                        "[default: SmolLM2-135M-Instruct]."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Pre-flight check: format errors by line, review warnings, token statistics, estimated training time.

    Exits 0 when there are no errors (warnings allowed), 1 otherwise.
    """
    from ..data.report import preflight
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
    train_file: Path = typer.Option(..., "--train", help="Training data, chat-format JSONL."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data, same format."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Up to 64 letters, digits, '.', '_', '-'."),
    epochs: str = typer.Option("auto", "--epochs", help="'auto' or 1–50."),
    batch_size: str = typer.Option("auto", "--batch-size", help="'auto' or 1–256 conversations per step."),
    learning_rate_multiplier: str = typer.Option("auto", "--learning-rate-multiplier",
                                                 help="'auto' or a factor on the method's base rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fixes data order and initialisation."),
    method: str = typer.Option("lora", "--method", help="lora or full."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank r."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: $TUNELAB_HOME/runs/…]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Fine-tune a base model on chat JSONL; writes the adapter, results.csv, config and manifest to --out."""
    from ..train.config import parse_config
    from ..train.recipe import run
    from .progress import ConsoleReporter

    if resume and out_dir is None:
        raise TunelabError("--resume needs --out naming the run to continue", param="out")
    for path in (train_file, validation):
        if path is not None and not path.is_file():
            raise TunelabError(f"{path}: no such file", param="train" if path == train_file else "validation")
    config = parse_config(
        model=model or get_settings().default_model, train_file=train_file, validation_file=validation,
        suffix=suffix, n_epochs=_auto(epochs, int), batch_size=_auto(batch_size, int),
        learning_rate_multiplier=_auto(learning_rate_multiplier, float), seed=seed, method=method,
        lora_rank=lora_rank, out=out_dir)
    result = run(config, ConsoleReporter(err), resume=resume)
    if result.stopped_early:
        err.print(f"[yellow]Stopped at step {result.steps}; checkpoint saved.[/yellow] Continue with: "
                  f"tunelab train … --out {result.out} --resume")
        raise typer.Exit(130)
    final = result.metrics
    summary = f"train loss {final.get('train_loss', float('nan')):.3f}"
    if "full_valid_loss" in final:
        summary += f", validation loss {final['full_valid_loss']:.3f}"
    out.print(f"[green]Done[/green] in {result.steps} steps ({summary}).")
    out.print(f"  adapter:  {result.weights}" if config.method == "lora" else f"  model:    {result.weights}")
    out.print(f"  metrics:  {result.out / 'results.csv'}")
    out.print(f"  manifest: {result.out / 'manifest.json'}")


def _auto(value: str, kind):
    """'auto' stays 'auto'; anything else must parse as `kind` (the config then checks its range)."""
    if value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        return value  # pydantic reports it, naming the flag


def main(argv: list[str] | None = None) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    # Library chatter (deprecation notices, per-file loading bars) hides tunelab's own progress and report.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*vocabulary was not modified.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        app(args=argv)
    except TunelabError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        sys.exit(2)
    except OSError as exc:  # disk full, permissions, a vanished file: say what and where, without a traceback
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] {escape(exc.strerror or str(exc))}{escape(where)}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
