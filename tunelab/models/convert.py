"""Convert a GGUF file into a safetensors model directory that transformers and PEFT can train.

transformers reads GGUF (with the `gguf` package) and dequantizes it to fp32. The loaded model still carries
the GGUF `quantization_config`, which makes it refuse to train or save, so it is rebuilt from its config and the
weights are copied over before saving.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .templates import TEMPLATES


def convert_gguf(gguf: Path, target: Path, *, default_template: str = "chatml") -> str:
    """Write `target` (config, safetensors, tokenizer) from `gguf`; return where the chat template came from.

    The directory appears whole or not at all: it is written next to `target` and renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task(f"Converting {gguf.name} (once): reading and dequantizing", total=3)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update(task, advance=1, description="Converting: rebuilding the model in fp32")
            settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
            config = type(quantized.config).from_dict(settings)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(quantized.state_dict(), strict=True)
            del quantized
            bar.update(task, advance=1, description="Converting: writing safetensors")
            template_source = "model"
            if not tokenizer.chat_template:
                tokenizer.chat_template = TEMPLATES[default_template]
                template_source = f"tunelab default ({default_template})"
            model.save_pretrained(work, safe_serialization=True)
            tokenizer.save_pretrained(work)
            bar.update(task, advance=1)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return template_source
