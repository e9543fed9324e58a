"""Which engine serves a model id: one engine per base model, fine-tunes attached to it as named adapters.

A model that is not loaded yet is loaded on first use (OpenAI semantics: any model you own can be called);
a fine-tune whose base is already loaded is ready in about a second. Full fine-tunes are their own base.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..models.catalog import LocalModel, resolve_model
from ..models.registry import Registry
from ..models.templates import END_OF_TURN
from .engine import Engine


@dataclass
class Target:
    """Everything a request for one model id needs."""

    engine: Engine  # or a RemoteEngine (remote.py): the same surface, a server elsewhere
    adapter: str | None  # None: the base model itself
    tokenizer: object  # renders the prompt with the chat template the model was trained with
    end_ids: set[int]  # tokens that end the assistant's turn
    end_strings: list[str]  # end-of-turn markers that are not single tokens (learned as text)


class EnginePool:
    def __init__(self, registry: Registry, decode_weights: str = "auto", prompt_cache_mb: int = 256):
        self.registry = registry
        self.decode_weights = decode_weights
        self.prompt_cache_mb = prompt_cache_mb
        self.engines: dict[str, Engine] = {}  # by base name (or full fine-tune id)
        self.tokenizers: dict[str, object] = {}
        self._lock = threading.Lock()

    def target(self, model_id: str) -> Target:
        """Resolve and, if needed, load `model_id` (slow on first use: run it off the event loop)."""
        located = self.registry.locate(model_id)
        with self._lock:
            if located.method == "full":
                engine = self._engine(located.id, LocalModel(located.id, located.weights, {}))
                return self._target(engine, None, engine.tokenizer)
            engine = self._engine(located.base, None)
            if located.method is None:
                return self._target(engine, None, engine.tokenizer)
            stale = engine.adapters.get(model_id)
            if stale is not None and stale != located.weights:
                engine.detach(model_id)
            engine.attach(model_id, located.weights)
            return self._target(engine, model_id, self._adapter_tokenizer(model_id, located.weights, engine))

    def describe(self, model_id: str) -> tuple[LocalModel, object, set[int], list[str]]:
        """What an engine elsewhere needs from tunelab to serve `model_id`, without loading any weights here: the
        model it runs as (its directory and context length), the tokenizer that renders prompts for it, and its
        end-of-turn ids and strings."""
        from transformers import GenerationConfig

        from ..models.load import load_tokenizer

        located = self.registry.locate(model_id)
        model = LocalModel(located.id, located.weights, {}) if located.method == "full" else \
            resolve_model(located.base)
        tokenizer = load_tokenizer(model.path)
        if located.method == "lora" and (located.weights / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer  # the chat template the fine-tune trained with (as _target)

            tokenizer = AutoTokenizer.from_pretrained(located.weights, trust_remote_code=False)
        try:
            eos = GenerationConfig.from_pretrained(model.path).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's eos alone
            eos = None
        target = self._target(None, None, tokenizer, eos)
        return model, tokenizer, target.end_ids, target.end_strings

    def forget(self, model_id: str) -> None:
        """A deleted model: free its adapter (or its whole engine, for a full fine-tune)."""
        with self._lock:
            dropped = self.engines.pop(model_id, None)
            if dropped is not None:
                dropped.close()
            self.tokenizers.pop(model_id, None)
            for engine in self.engines.values():
                engine.detach(model_id)

    def close(self) -> None:
        """The server stops: every engine's scheduler thread ends, and with it the OpenMP threads it kept, which
        would otherwise slow every later parallel operation in the process (an embedding app, a test run)."""
        with self._lock:
            engines, self.engines = list(self.engines.values()), {}
            self.tokenizers.clear()
        for engine in engines:
            engine.close()

    def _engine(self, key: str, model: LocalModel | None) -> Engine:
        if key not in self.engines:
            self.engines[key] = Engine(model or resolve_model(key), weights=self.decode_weights,
                                       prompt_cache_mb=self.prompt_cache_mb)
        return self.engines[key]

    def _adapter_tokenizer(self, model_id: str, path: Path, engine: Engine):
        """The tokenizer saved with a fine-tune carries the chat template it trained with; checkpoints use the
        base model's, which is the one they train with."""
        if model_id not in self.tokenizers:
            tokenizer = engine.tokenizer
            if (path / "tokenizer_config.json").is_file():
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.tokenizers[model_id] = tokenizer
        return self.tokenizers[model_id]

    @staticmethod
    def _target(engine: Engine | None, adapter: str | None, tokenizer, eos=None) -> Target:
        end_ids, end_strings = set(), []
        if tokenizer.eos_token_id is not None:
            end_ids.add(tokenizer.eos_token_id)
        # A model may end turns with tokens its tokenizer does not call eos (Llama 3's <|eot_id|>): its
        # generation_config.json names them, and a server that ignores it lets the answer run on.
        if engine is not None:
            eos = engine.model.generation_config.eos_token_id
        end_ids.update([eos] if isinstance(eos, int) else (eos or []))
        template = tokenizer.chat_template or ""
        for marker in END_OF_TURN.values():
            if marker not in template:
                continue
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                end_ids.add(ids[0])
            else:
                end_strings.append(marker)
        return Target(engine, adapter, tokenizer, end_ids, end_strings)
