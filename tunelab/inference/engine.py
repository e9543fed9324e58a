"""The inference engine: one base model in memory, LoRA adapters attached to it by name, and a scheduler thread
that advances every active generation one token at a time, in turn.

    engine = Engine(resolve_model("SmolLM2-135M-Instruct"))
    engine.attach("ft:…", adapter_dir)                     # seconds: the base is already loaded
    generation = engine.submit(prompt_ids, SamplingParams(max_tokens=64, seed=1), adapter="ft:…")

Each generation keeps its own KV cache and runs with its own adapter (or none, for the base model), so requests
for the base and for any number of fine-tunes share one copy of the weights and interleave fairly: a long answer
never holds up a short one. Generation stops at the model's end-of-turn token, a stop string, `max_tokens` or the
context length; a cancelled generation (the client went away) is dropped before its next token.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..models.catalog import LocalModel
from ..models.load import load_causal_lm, load_tokenizer


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]


class Generation:
    """One answer being generated. `on_event(kind, payload)` is called from the scheduler thread with
    ("delta", text, logprobs) as text becomes final and ("done", finish_reason) at the end."""

    def __init__(self, prompt: list[int], params: SamplingParams, adapter: str | None, end_ids: set[int],
                 context: int, on_event: Callable):
        self.prompt = prompt
        self.params = params
        self.adapter = adapter
        self.end_ids = end_ids
        self.context = context
        self.on_event = on_event
        self.tokens: list[int] = []
        self.text = ""  # decoded so far (final, sent)
        self.cache = None
        self.finish_reason: str | None = None
        self.cancelled = False
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                        else secrets.randbits(63))
        self.counts: dict[int, int] = {}
        self.pending_logprobs: list[TokenLogprob] = []

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self, base: LocalModel):
        self.base = base
        self.tokenizer = load_tokenizer(base.path)
        self.model = load_causal_lm(base.path).eval()
        self.context = base.meta.get("context_length") or self.model.config.max_position_embeddings or 2048
        self.peft = None  # the PeftModel wrapping `model`, once an adapter is attached
        self.adapters: dict[str, Path] = {}
        self._active: deque[Generation] = deque()
        self._wake = threading.Condition()  # guards the queue only: held for microseconds
        self._model_lock = threading.Lock()  # a forward pass, or attaching an adapter
        self._thread = threading.Thread(target=self._run, name=f"tunelab-engine-{base.name}", daemon=True)
        self._thread.start()

    # --- adapters ---

    def attach(self, name: str, path: Path) -> None:
        """Load a LoRA adapter under `name` (idempotent)."""
        from peft import PeftModel

        with self._model_lock:  # never while a forward pass runs
            if name in self.adapters:
                return
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self.peft.eval()
            else:
                self.peft.load_adapter(path, adapter_name=name)
            self.adapters[name] = Path(path)

    def detach(self, name: str) -> None:
        with self._model_lock:
            if name in self.adapters and self.peft is not None:
                self.peft.delete_adapter(name)
                del self.adapters[name]

    # --- generation ---

    def submit(self, prompt: list[int], params: SamplingParams, *, adapter: str | None, end_ids: set[int],
               on_event: Callable) -> Generation:
        generation = Generation(prompt, params, adapter, end_ids, self.context, on_event)
        with self._wake:
            self._active.append(generation)
            self._wake.notify()
        return generation

    def warm_up(self, adapter: str | None, end_ids: set[int], timeout: float = 120.0) -> None:
        """One token through the scheduler: proves the model (and adapter) answer."""
        done = threading.Event()
        failure = []

        def on_event(kind, payload):
            if kind == "error":
                failure.append(payload)
            if kind in ("done", "error"):
                done.set()

        prompt = self.tokenizer("Hello", add_special_tokens=False)["input_ids"] or [0]
        self.submit(prompt, SamplingParams(max_tokens=1, temperature=0), adapter=adapter, end_ids=end_ids,
                    on_event=on_event)
        if not done.wait(timeout) or failure:
            raise RuntimeError(failure[0] if failure else "the model did not answer its warm-up in time")

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._active:
                    self._wake.wait()
                generation = self._active.popleft()
            if generation.cancelled:
                generation.cache = None
                continue
            try:
                with self._model_lock:
                    self._step(generation)
            except Exception as exc:  # a fault in one generation ends it, not the engine
                generation.finish_reason, generation.cache = "error", None
                generation.on_event("error", f"{type(exc).__name__}: {exc}")
                continue
            if generation.finish_reason is None:
                with self._wake:
                    self._active.append(generation)  # round robin: back of the line

    @torch.no_grad()
    def _step(self, g: Generation) -> None:
        """Compute one token of `g` (the whole prompt on its first step) and report what became final."""
        inputs = {"input_ids": torch.tensor([g.prompt if g.cache is None else g.tokens[-1:]]), "cache": g.cache,
                  "use_cache": True, "logits_to_keep": 1}
        if g.adapter:
            self.peft.set_adapter(g.adapter)
            out = self.peft(**inputs)
        elif self.peft is not None:  # the base model's own answer: LoRA layers switched off
            with self.peft.disable_adapter():
                out = self.peft(**inputs)
        else:
            out = self.model(**inputs)
        g.cache = out.cache
        logits = out.logits[0, -1].float()
        token = self._sample(g, logits)
        if token in g.end_ids:
            return self._finish(g, "stop")
        g.tokens.append(token)
        g.counts[token] = g.counts.get(token, 0) + 1
        self._emit(g)
        if g.finish_reason is None:
            if len(g.tokens) >= g.params.max_tokens or len(g.prompt) + len(g.tokens) >= g.context:
                self._finish(g, "length")

    def _sample(self, g: Generation, logits: torch.Tensor) -> int:
        p = g.params
        if g.counts and (p.presence_penalty or p.frequency_penalty):
            seen = torch.tensor(list(g.counts))
            counts = torch.tensor(list(g.counts.values()), dtype=logits.dtype)
            logits = logits.clone()
            logits[seen] -= p.presence_penalty + p.frequency_penalty * counts
        if p.temperature == 0:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            token = int(torch.multinomial(probs, 1, generator=g.generator))
        if p.logprobs:
            logp = torch.log_softmax(logits, dim=-1)
            top = []
            if p.top_logprobs:
                values, indices = logp.topk(p.top_logprobs)
                top = [(self._piece(int(i)), float(v)) for v, i in zip(values, indices)]
            g.pending_logprobs.append(TokenLogprob(self._piece(token), float(logp[token]), top))
        return token

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _emit(self, g: Generation) -> None:
        """Send the text that is final: not a half-decoded character, not a possible start of a stop string."""
        text = self.tokenizer.decode(g.tokens, skip_special_tokens=True)
        if any(s in text for s in g.params.stop):
            return self._finish(g, "stop")
        if text.endswith("\ufffd"):
            return
        hold = max((len(s) - 1 for s in g.params.stop), default=0)
        safe = len(text)
        for k in range(hold, 0, -1):  # keep back a tail that could grow into a stop string
            if any(s.startswith(text[-k:]) for s in g.params.stop):
                safe = len(text) - k
                break
        self._send(g, text[:safe])

    def _send(self, g: Generation, text: str) -> None:
        if len(text) > len(g.text) or g.pending_logprobs:
            delta, g.text = text[len(g.text):], text
            logprobs, g.pending_logprobs = g.pending_logprobs, []
            g.on_event("delta", (delta, logprobs))

    def _finish(self, g: Generation, reason: str) -> None:
        """Send what was held back (up to a stop string, which is never sent) and end the generation."""
        text = self.tokenizer.decode(g.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in g.params.stop if s in text]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        self._send(g, text)
        g.finish_reason = reason
        g.cache = None  # free the memory now
        g.on_event("done", reason)
