"""The exports service: a request checked at once (so a wrong model or option is a 400 or 404 naming the field,
not a failed export later), recorded `queued` and handed to the runner; pages of exports; their files; deletion.

The model rules (a base model exports as GGUF only, a full fine-tune has no adapter) are the domain's too
(`export_model` enforces them); they are checked here as well so that the request, not the export, fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidRequest
from ...export import ExportRequest
from ...models.registry import Registry
from ...store.exports import Exports
from .protocol import ExportCreate, ExportList, ExportObject
from .runner import ExportRunner


@dataclass
class ExportsService:
    exports: Exports
    registry: Registry
    runner: ExportRunner

    def create(self, body: ExportCreate) -> ExportObject:
        check(body)
        located = self.registry.locate(body.model)  # unknown: 404 model_not_found; a base model not installed: 400
        if located.method is None and body.format != "gguf":
            raise InvalidRequest(f"{body.model} is a base model: it has no fine-tuning to export as "
                                 f"{body.format}; export a fine-tuned model or a checkpoint (ft:…), or choose "
                                 "format gguf", param="model")
        if located.method == "full" and body.format in ("peft", "gguf-lora"):
            raise InvalidRequest(f"{body.model} is a full fine-tune: it has no LoRA adapter to export; choose "
                                 "format merged or gguf", param="format")
        quant = (body.quantization or "f16") if body.format == "gguf" else None
        record = self.exports.add(body.model, body.format, quant, body.ollama, body.system)
        self.runner.submit(record["id"], body.model, ExportRequest(format=body.format, quant=quant or "f16",
                                                                   ollama=body.ollama, system=body.system))
        return ExportObject.of(record)

    def list(self, *, limit: int, after: str | None, model: str | None) -> ExportList:
        records, more = self.exports.list(limit=limit, after=after, model=model)
        data = [ExportObject.of(r) for r in records]
        return ExportList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                          has_more=more)

    def get(self, export_id: str) -> ExportObject:
        return ExportObject.of(self.exports.get(export_id))

    def file(self, export_id: str, name: str) -> Path:
        return self.exports.file(export_id, name)

    def delete(self, export_id: str) -> dict:
        self.exports.delete(export_id)
        return {"id": export_id, "object": "export", "deleted": True}


def check(body: ExportCreate) -> None:
    """The options that only a GGUF export takes."""
    if body.format != "gguf":
        if body.quantization is not None:
            raise InvalidRequest(f"quantization applies to gguf exports only, not {body.format}",
                                 param="quantization")
        if body.ollama:
            raise InvalidRequest("ollama needs format gguf: Ollama runs the merged model from a GGUF file",
                                 param="ollama")
    if body.system is not None and not body.ollama:
        raise InvalidRequest("system is the SYSTEM line of the Ollama Modelfile; set ollama to true",
                             param="system")
