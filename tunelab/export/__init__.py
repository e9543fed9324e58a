"""Export a model out of tunelab: a PEFT adapter, a merged Hugging Face model, one GGUF file (with an Ollama
Modelfile beside it), or the LoRA adapter alone as llama.cpp's LoRA GGUF, applied to the base model's GGUF.

    tunelab export ft:SmolLM2-135M-Instruct:local:ft-travel:1a2b3c4d --format gguf --quant q8_0 --ollama

Every format carries the chat template and the end-of-turn token training used, so the model stops where it
should wherever it runs. The output directory appears whole or not at all (staging.py); the round trip of each
format is proven in tests/test_export.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidRequest
from ..models.registry import Registry
from .source import locate_source
from .staging import staged

FORMATS = ("peft", "merged", "gguf", "gguf-lora")
QUANTS = ("f16", "q8_0", "q4_0")

Progress = Callable[[float, str], None]


@dataclass
class ExportRequest:
    format: str                 # "peft" | "merged" | "gguf" | "gguf-lora"
    quant: str = "f16"          # gguf only
    ollama: bool = False        # gguf only: write a Modelfile beside the GGUF
    system: str | None = None   # Ollama SYSTEM line; None: the job's system message when all its training
                                #   conversations share one, else none


@dataclass
class ExportedFile:
    name: str    # relative to the output directory
    bytes: int


def check_request(request: ExportRequest) -> None:
    """Refuse a request that cannot mean anything before any model is read."""
    if request.format not in FORMATS:
        raise InvalidRequest(f"unknown export format {request.format!r}; choose one of {', '.join(FORMATS)}",
                             param="format")
    if request.quant not in QUANTS:
        raise InvalidRequest(f"unknown quantisation {request.quant!r}; choose one of {', '.join(QUANTS)}",
                             param="quant")
    if request.format != "gguf" and request.quant != "f16":
        raise InvalidRequest(f"--quant applies to the gguf format only; the {request.format} format keeps the "
                             "weights as trained", param="quant")
    if request.format != "gguf" and request.ollama:
        raise InvalidRequest("--ollama needs the gguf format: Ollama runs GGUF files (it no longer builds a model "
                             "from a LoRA adapter)", param="ollama")


def export_model(registry: Registry, model_id: str, request: ExportRequest, out: Path,
                 progress: Progress | None = None) -> list[ExportedFile]:
    """Export `model_id` (a fine-tuned model id `ft:…`, a checkpoint id `ft:…:ckpt-step-N`, or — for gguf only —
    a base model name) into the directory `out`, which must not exist yet; it appears whole or not at all.
    progress(fraction 0..1, what is happening now) is called along the way. Raises tunelab.errors types
    (ModelNotFound param="model", InvalidRequest param="format"/"quant"/"model"/"out"); a full disk: clean up,
    then let the OSError (ENOSPC) propagate."""
    from . import hf

    check_request(request)
    out = Path(out)
    if out.exists():
        raise InvalidRequest(f"{out} already exists; choose a new output directory", param="out")
    report = progress or (lambda fraction, what: None)
    source = locate_source(registry, model_id, request.format)
    if request.format == "gguf-lora" and source.method != "lora":
        raise InvalidRequest(f"{model_id} is a full fine-tune: it has no LoRA adapter to write as a LoRA GGUF; "
                             "choose the gguf format", param="format")
    if request.ollama:
        from .ollama import turn_format

        turn_format(source.tokenizer)  # a template Ollama cannot be given is refused before the long write
    report(0.0, f"exporting {model_id} as {request.format}")
    with staged(out) as work:
        if request.format == "peft":
            hf.write_peft(source, work, report)
        elif request.format == "merged":
            hf.write_merged(source, work, report)
        elif request.format == "gguf-lora":
            from .gguf_file import _file_stem
            from .gguf_lora import write_lora_gguf

            write_lora_gguf(source.weights, source.model_dir, work / f"{_file_stem(model_id)}-lora-f16.gguf", report,
                            name=model_id)
        else:
            from .gguf_file import write_gguf

            gguf_file = write_gguf(source, work, request.quant, report)
            if request.ollama:
                from .ollama import write_modelfile

                write_modelfile(source, registry, work, gguf_file, request.system)
    report(1.0, "done")
    return [ExportedFile(str(p.relative_to(out)), p.stat().st_size)
            for p in sorted(out.rglob("*")) if p.is_file()]
