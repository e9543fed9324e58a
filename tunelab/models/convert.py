"""Convert a GGUF file into a safetensors model directory that transformers and PEFT can train.

transformers reads GGUF (with the `gguf` package) and dequantizes it to fp32. The loaded model still carries
the GGUF `quantization_config`, which makes it refuse to train or save, so it is rebuilt from its config and the
weights are copied over before saving.

A GGUF file does not state Gemma 3's attention scale (`query_pre_attn_scalar`); transformers' reader assumes 256,
Gemma 3's usual head size. It is set here as llama.cpp derives it, so that the model computes what llama.cpp runs:
the head size, or hidden / heads for the 27B model (62 layers), the one Gemma 3 whose scale is not its head size.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from .templates import TEMPLATES


def template_for(model_type: str | None) -> str:
    """The default chat template (templates.TEMPLATES) of a model that has none: Gemma's own turn format for a
    Gemma model, whose markers are tokens of its vocabulary; ChatML for any other."""
    return "gemma" if (model_type or "").startswith("gemma") else "chatml"


def convert_gguf(gguf: Path, target: Path, *, default_template: str | None = None) -> str:
    """Write `target` (config, safetensors, tokenizer) from `gguf`; return where the chat template came from
    (`default_template` where the file has none; None: the architecture's, `template_for`).

    The directory appears whole or not at all: it is written next to `target` and renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    console = Console(stderr=True)
    console.print(f"Converting {gguf.name} into safetensors (once; later loads take seconds)")
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # transformers' own bar follows the slow part, dequantizing each tensor
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                         **_unstated(gguf))
        if not bars_were_on:
            hf_logging.disable_progress_bar()
        with console.status("rebuilding the model in fp32 and writing safetensors"):
            settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
            config = type(quantized.config).from_dict(settings)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(quantized.state_dict(), strict=True)
            del quantized
            template_source = "model"
            if not tokenizer.chat_template:
                default = default_template or template_for(config.model_type)
                tokenizer.chat_template = TEMPLATES[default]
                template_source = f"tunelab default ({default})"
            model.save_pretrained(work, safe_serialization=True)
            tokenizer.save_pretrained(work)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not bars_were_on:
            hf_logging.disable_progress_bar()
    console.print(f"Converted into {target}")
    return template_source


def _unstated(gguf: Path) -> dict:
    """Config fields the GGUF file does not state, as llama.cpp derives them (see the module's docstring)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not config.model_type.startswith("gemma3"):
        return {}
    big = config.num_hidden_layers == 62  # Gemma 3 27B
    return {"query_pre_attn_scalar": config.hidden_size // config.num_attention_heads if big else config.head_dim}
