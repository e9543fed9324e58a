"""Load a model directory safely: safetensors weights only, never remote code, never pickle."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..errors import ModelRefused

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_dir(path: Path) -> dict:
    """Refuse directories tunelab will not load, with the reason; return the parsed `config.json`."""
    if not (path / "config.json").is_file():
        raise ModelRefused(f"{path} has no config.json; expected a Hugging Face model directory or a .gguf file")
    config = json.loads((path / "config.json").read_text())
    if "auto_map" in config:
        raise ModelRefused(f"{path} needs custom code (auto_map in config.json); tunelab never runs remote code")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelRefused(f"{path} holds only pickle weights ({', '.join(pickles[:3])}); tunelab loads "
                               "safetensors only, because unpickling can run arbitrary code. Convert them first.")
        raise ModelRefused(f"{path} has no *.safetensors weights")
    return config


def check_adapter_dir(path: Path) -> None:
    """Refuse a LoRA adapter directory without safetensors weights: PEFT would fall back to unpickling a .bin."""
    if not (path / "adapter_model.safetensors").is_file():
        pickles = sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES)
        held = f"it holds only pickle weights ({', '.join(pickles[:3])})" if pickles else "it has no weights"
        raise ModelRefused(f"the adapter in {path} has no adapter_model.safetensors: {held}; tunelab loads "
                           "safetensors only, because unpickling can run arbitrary code")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    check_model_dir(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


# transformers' from_pretrained is not thread-safe: two models loading at once (a deployment's engine and a GGUF
# export, say) can come out with weights left on the meta device or untied. One load at a time per process.
_LOADING = threading.Lock()


def load_causal_lm(path: Path, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    with _LOADING:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True,
                                                    trust_remote_code=False)
