"""What an export reads: the model's base, its fine-tuned weights (a LoRA adapter or a whole model), and the
tokenizer with the chat template training used.

A fine-tune's weights directory holds the tokenizer it trained with (train/recipe.py saves it beside the
weights); a checkpoint trained with its base model's tokenizer, so that is the one exported with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import InvalidRequest
from ..models.catalog import LocalModel, resolve_model
from ..models.registry import Registry
from ..models.templates import END_OF_TURN


@dataclass
class Source:
    model_id: str
    base: LocalModel
    method: str | None  # None: the base model itself; "lora" (weights: an adapter) or "full" (a whole model)
    weights: Path | None
    job_id: str | None  # the fine-tuning job that produced it

    @property
    def model_dir(self) -> Path:
        """The directory holding config.json and the (base or fully fine-tuned) weights."""
        return self.weights if self.method == "full" else self.base.path

    @property
    def tokenizer_dir(self) -> Path:
        if self.weights is not None and (self.weights / "tokenizer_config.json").is_file():
            return self.weights
        return self.base.path

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, trust_remote_code=False)
        if not tokenizer.chat_template:
            raise InvalidRequest(f"{self.model_id} has no chat template to export; import the base model again "
                                 "so that tunelab gives it one", param="model")
        return tokenizer

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template

    @cached_property
    def config(self) -> dict:
        import json

        return json.loads((self.model_dir / "config.json").read_text())

    def load_model(self):
        """The model in fp32 as served: the LoRA adapter merged into its base, or the whole fine-tuned model."""
        from ..models.load import load_causal_lm

        model = load_causal_lm(self.model_dir)
        if self.method == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.weights).merge_and_unload()
        model.eval()
        return model


def locate_source(registry: Registry, model_id: str, format: str) -> Source:
    """Find `model_id` and check that `format` can be made from it (ModelNotFound / InvalidRequest otherwise)."""
    located = registry.locate(model_id)  # raises model_not_found for an unknown id
    if located.method is None and format != "gguf":
        raise InvalidRequest(f"{model_id} is a base model: there is no fine-tune to "
                             f"{'merge' if format == 'merged' else 'export as an adapter'}; export a fine-tuned "
                             "model or a checkpoint (a base model can be exported as gguf)", param="model")
    if located.method == "full" and format == "peft":
        raise InvalidRequest(f"{model_id} is a full fine-tune: it has no LoRA adapter to export; choose the merged "
                             "or gguf format", param="format")
    job_id = None
    if located.method is not None:
        job_id = registry.get(model_id).get("fine_tuning_job_id")
    return Source(model_id, resolve_model(located.base), located.method, located.weights, job_id)


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokens that end an assistant turn, as serving stops on them (inference/pool.py): the end-of-turn
    marker of the chat template when it is one token (first: it is the one a turn really ends with), then eos."""
    ids: list[int] = []
    template = tokenizer.chat_template or ""
    for marker in END_OF_TURN.values():
        if marker in template:
            found = tokenizer(marker, add_special_tokens=False)["input_ids"]
            if len(found) == 1 and found[0] not in ids:
                ids.append(found[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def end_of_turn_markers(tokenizer) -> list[str]:
    """The end-of-turn texts of the chat template (what a runtime that stops on strings needs)."""
    template = tokenizer.chat_template or ""
    markers = [m for m in END_OF_TURN.values() if m in template]
    eos = tokenizer.eos_token
    if eos and eos not in markers and eos in template:
        markers.append(eos)
    return markers


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts bos before plain text (GGUF's add_bos flag: llama.cpp then adds it too)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
