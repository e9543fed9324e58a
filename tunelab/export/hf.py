"""The Hugging Face formats: the PEFT adapter as trained, or a safetensors model with the LoRA merged in.

Both carry the tokenizer with the chat template training used; the merged model also carries a
generation_config.json whose eos ids are the end-of-turn tokens serving stops on, so `model.generate` stops at
the end of the assistant's turn instead of running on into a made-up next turn.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from .source import Source, end_of_turn_ids

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def write_peft(source: Source, work: Path, progress: Callable[[float, str], None]) -> None:
    """The adapter (config + safetensors weights) and the tokenizer: `PeftModel.from_pretrained(base, work)`."""
    progress(0.2, "copying the adapter")
    for name in ADAPTER_FILES:  # a checkpoint also holds optimizer and RNG state: not part of the model
        shutil.copyfile(source.weights / name, work / name)
    progress(0.7, "writing the tokenizer and chat template")
    source.tokenizer.save_pretrained(work)


def write_merged(source: Source, work: Path, progress: Callable[[float, str], None]) -> None:
    """The fp32 model with the adapter merged (or the full fine-tune), tokenizer, template, generation config."""
    progress(0.1, "loading the model")
    model = source.load_model()
    tokenizer = source.tokenizer
    ends = end_of_turn_ids(tokenizer)
    generation = model.generation_config
    generation.eos_token_id = ends if len(ends) > 1 else ends[0]
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    progress(0.5, "writing the merged weights")
    model.save_pretrained(work, safe_serialization=True)
    progress(0.9, "writing the tokenizer and chat template")
    tokenizer.save_pretrained(work)
