"""`tunelab export`: write a fine-tuned model, a checkpoint or (as GGUF) a base model as files other tools load, in
this process: no service is needed, and the files go straight to `--out`.

    tunelab export ft:SmolLM2-135M-Instruct:local:ft-travel:… --format peft
    tunelab export ft:SmolLM2-135M-Instruct:local:ft-travel:… --format gguf --quant q8_0 --ollama
    tunelab export ft:…:ckpt-step-94 --format merged --out exports/travel-merged
    tunelab export ft:SmolLM2-135M-Instruct:local:ft-travel:… --format gguf-lora   # the adapter alone, for llama.cpp

A live bar shows what the export is doing; at the end a table lists the files and their sizes, followed by the
commands that load them in transformers, llama.cpp or Ollama. The service's `/v1/exports` runs the same export.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import get_settings
from ..errors import InvalidRequest
from .clean import size

out = Console()
err = Console(stderr=True)


def export(
    model: str = typer.Argument(..., help="A fine-tuned model (ft:…), one of its checkpoints (ft:…:ckpt-step-N) "
                                "or, for gguf, a base model."),
    format: str = typer.Option(..., "--format", help="peft, merged, gguf or gguf-lora (the LoRA adapter alone, "
                               "for llama.cpp's --lora on the base model's GGUF)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf only: f16 (the default), q8_0 or q4_0."),
    ollama: bool = typer.Option(False, "--ollama", help="gguf only: write an Ollama Modelfile beside the GGUF."),
    system: Optional[str] = typer.Option(None, "--system", help="with --ollama: the Modelfile's SYSTEM message "
                                         "(by default the training data's, when all its conversations share one)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="A new directory for the files (by default "
                                           "./exports/<model>-<format>, plus -<quant> for gguf)."),
) -> None:
    """Export a model as a PEFT adapter, a merged safetensors model, a GGUF file (with an Ollama Modelfile) or a
    LoRA GGUF for llama.cpp."""
    from ..export import FORMATS, QUANTS, ExportRequest, export_model
    from ..models.registry import Registry
    from ..store.db import Database

    check_options(format, quant, ollama, system, FORMATS, QUANTS)
    quant = (quant or "f16") if format == "gguf" else None
    target = out_dir or Path("exports") / f"{safe_name(model)}-{format}{f'-{quant}' if quant else ''}"
    if target.exists():
        raise InvalidRequest(f"{target} already exists; choose another --out or remove it", param="out")
    settings = get_settings()
    db = Database(settings.state_dir / "tunelab.db")
    db.migrate()  # a fresh home has no state yet: its base models still export as GGUF
    request = ExportRequest(format=format, quant=quant or "f16", ollama=ollama, system=system)
    with ExportProgress(err) as progress:
        files = export_model(Registry(db, settings.owner), model, request, target, progress)
    show(target, files, format, model)


def check_options(format: str, quant: str | None, ollama: bool, system: str | None, formats, quants) -> None:
    """Every invalid option at once, each named by its flag."""
    problems = []
    if format not in formats:
        problems.append(f"--format must be one of {', '.join(formats)}, not {format!r}")
    if quant is not None and quant not in quants:
        problems.append(f"--quant must be one of {', '.join(quants)}, not {quant!r}")
    elif quant is not None and format in formats and format != "gguf":
        problems.append(f"--quant applies to --format gguf only, not {format}")
    if ollama and format in formats and format != "gguf":
        problems.append("--ollama needs --format gguf: Ollama runs the merged model from a GGUF file")
    if system is not None and not ollama:
        problems.append("--system is the SYSTEM line of the Ollama Modelfile; add --ollama")
    if problems:
        raise InvalidRequest("; ".join(problems), param="format")


def safe_name(model: str) -> str:
    """A model id as a directory or Ollama model name: `ft:base:owner:suffix:id` → `ft-base-owner-suffix-id`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "model"


class ExportProgress:
    """The export's progress: a live bar on a terminal; elsewhere (logs, pipes) a line every tenth of the way."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Progress | None = None
        self.shown = -1.0  # the fraction last written as a line

    def __enter__(self) -> "ExportProgress":
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]export"), BarColumn(), TaskProgressColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console)
            self.task = self.bar.add_task("starting", total=1.0)
            self.bar.start()
        return self

    def __call__(self, fraction: float, stage: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=fraction, description=escape(stage))
        elif fraction >= self.shown + 0.1 or (fraction >= 1.0 > self.shown):
            self.shown = fraction
            self.console.print(f"{fraction:4.0%} {escape(stage)}", highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def show(target: Path, files, format: str, model: str) -> None:
    """The files with their sizes, then how to load them."""
    out.print(f"Exported [bold]{escape(model)}[/bold] to {escape(str(target))}", highlight=False, soft_wrap=True)
    table = Table("file", "size")
    for f in files:
        table.add_row(escape(f.name), size(f.bytes))
    table.add_row("[bold]total", f"[bold]{size(sum(f.bytes for f in files))}")
    out.print(table)
    where = shlex.quote(str(target))
    out.print("[bold]Next:[/bold]")
    if format == "peft":
        base = json.loads((target / "adapter_config.json").read_text()).get("base_model_name_or_path")
        out.print(f"  python -c \"from peft import AutoPeftModelForCausalLM; "
                  f"AutoPeftModelForCausalLM.from_pretrained('{target}')\"", highlight=False, soft_wrap=True)
        out.print(f"  (the base model it loads: {escape(str(base))}; or PeftModel.from_pretrained(your_base_model, "
                  f"'{target}'))", highlight=False, soft_wrap=True)
    elif format == "merged":
        out.print(f"  python -c \"from transformers import AutoModelForCausalLM; "
                  f"AutoModelForCausalLM.from_pretrained('{target}')\"", highlight=False, soft_wrap=True)
    elif format == "gguf-lora":
        base = model.removeprefix("ft:").split(":")[0]
        lora = shlex.quote(str(target / files[0].name))
        out.print(f"  tunelab export {shlex.quote(base)} --format gguf   # the base model's GGUF, once for all its "
                  "fine-tunes", highlight=False, soft_wrap=True)
        out.print(f"  llama-server -m BASE.gguf --lora {lora} --lora-init-without-apply --jinja   # then per "
                  'request: "lora": [{"id": 0, "scale": 1.0}]', highlight=False, soft_wrap=True)
    else:
        gguf = next((f.name for f in files if f.name.endswith(".gguf")), "model.gguf")
        out.print(f"  llama-server -m {shlex.quote(str(target / gguf))}", highlight=False, soft_wrap=True)
        if any(Path(f.name).name == "Modelfile" for f in files):
            name = safe_name(model).lower()
            out.print(f"  ollama create {name} -f {where}/Modelfile && ollama run {name}", highlight=False,
                      soft_wrap=True)

