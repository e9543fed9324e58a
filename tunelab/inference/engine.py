"""The inference engine: one base model in memory, LoRA adapters attached to it by name, and a scheduler thread
that decodes every active answer together, one batched forward pass per token.

    engine = Engine(resolve_model("SmolLM2-135M-Instruct"))
    engine.attach("ft:…", adapter_dir)                     # seconds: the base is already loaded
    generation = engine.submit(prompt_ids, SamplingParams(max_tokens=64, seed=1), adapter="ft:…")

Decoding one token reads all the weights whatever the batch size, so answering eight requests in one forward pass
costs little more than answering one. Rows of the batch may use different adapters or none, so the base model and
any number of fine-tunes share one copy of the weights and one pass. Llama and Qwen2 models (SmolLM2, Qwen2.5)
decode through tunelab's lean Llama decoder (decoder.py) with 4-bit weights where the model already is 4-bit; other
architectures (Gemma 3) through transformers' forward (batch.py), with one line in the server's log saying why.
Scoring (validation loss) always uses transformers' fp32 model with PEFT.

New requests' prompts are processed (one pass over what the Llama decoder's prompt cache does not already hold),
then they join the batch; a finished or cancelled row leaves it. Between two decode steps the requests waiting
join together, in one pass, up to about PROMPT_TOKENS_PER_PASS prompt tokens to compute (the generic path takes
one prompt at a time), so a burst of new requests slows the running answers down but never stops them, and
answers that arrive together decode together from their first token.
Generation stops at the model's end-of-turn token, a stop string, `max_tokens` or the context length; a
cancelled generation (the client went away) is dropped before its next token.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..models.catalog import LocalModel
from ..models.llama_block import unsupported
from ..models.load import load_causal_lm, load_tokenizer
from ..threads import use_all_cores_here
from .batch import Batch
from .decoder import LlamaBatch, LlamaDecoder
from .detokenize import IncrementalText
from .weights import check_format, integer_kernels_fast
from .weights import prepare as prepare_weights

log = logging.getLogger("tunelab.inference")


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
                 context: int, on_event: Callable, tokenizer):
        self.prompt = prompt
        self.params = params
        self.adapter = adapter
        self.end_ids = end_ids
        self.context = context
        self.on_event = on_event
        self.tokens: list[int] = []  # the last one is not in the KV cache yet: the next pass feeds it
        self.text = ""  # decoded so far (final, sent)
        self.text_so_far = IncrementalText(tokenizer)  # the text of `tokens`, decoded as they come
        self.finish_reason: str | None = None
        self.cancelled = False
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                        else secrets.randbits(63))
        self.counts: dict[int, int] = {}
        self.pending_logprobs: list[TokenLogprob] = []

    def cancel(self) -> None:
        self.cancelled = True


class Task:
    """A function to run on the scheduler thread, and its outcome for the caller waiting on it."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.done = threading.Event()
        self.value, self.error = None, None

    def run(self) -> None:
        try:
            self.value = self.fn()
        except Exception as exc:
            self.error = exc
        self.done.set()

    def result(self):
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Engine:
    def __init__(self, base: LocalModel, *, weights: str = "auto", max_batch: int = 16, generic: bool = False,
                 prompt_cache_mb: int = 256):
        self.base = base
        self.prompt_cache_mb = prompt_cache_mb  # the Llama decoder's (prompt_cache.py); the generic path has none
        self.generic = generic  # decode through transformers' forward even where the Llama decoder could
        self.tokenizer = load_tokenizer(base.path)
        self.max_batch = max_batch
        self.peft = None  # the PeftModel wrapping `model`, once an adapter is attached
        self.adapters: dict[str, Path] = {}
        self._routed: str | None = "mixed"  # what the LoRA layers apply now (see _route)
        self._waiting: deque[Generation] = deque()  # submitted; prompt not processed yet
        self._tasks: deque[Task] = deque()  # other work for the model (scoring), run between decode steps
        self._batch = None  # the generations being decoded together (scheduler thread only), set by _load
        self._wake = threading.Condition()  # guards `_waiting` only: held for microseconds
        self._model_lock = threading.Lock()  # a forward pass, or attaching an adapter
        self._closed = False
        _engines.add(self)
        # The model is loaded on the scheduler thread, the thread with the cores (tunelab/threads.py).
        loaded, failure = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(weights, loaded, failure),
                                        name=f"tunelab-engine-{base.name}", daemon=True)
        self._thread.start()
        loaded.wait()
        if failure:
            raise failure[0]

    def _load(self, weights: str) -> None:
        check_format(weights)
        self.model = load_causal_lm(self.base.path).eval()
        self.context = self.base.meta.get("context_length") or self.model.config.max_position_embeddings or 2048
        self.decoder = None
        aside = None if self.generic else unsupported(self.model, "decoding")
        if aside:  # once per base model load: why this model decodes on the slower generic path
            log.warning("%s decodes through transformers' forward: tunelab's decoder steps aside for %s",
                        self.base.name, aside)
        if not self.generic and aside is None:
            if weights == "auto":  # the integer kernels, where this CPU vectorises them
                weights = "int4" if integer_kernels_fast() else "fp32"
            self.decoder = LlamaDecoder(self.model, weights, self.prompt_cache_mb * 2**20)
            self.weights = self.decoder.fmt  # what decoding reads: "int4", "int8" or "fp32"
            self._batch = LlamaBatch(self.decoder, self.context)
        else:
            self.weights = prepare_weights(self.model, weights)  # "int8" or "fp32"
            self._batch = Batch(self._forward)

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
            if self.decoder is not None:
                try:
                    self.decoder.add_adapter(name, self.peft)
                except ValueError:
                    self.peft.delete_adapter(name)
                    raise
            self.adapters[name] = Path(path)
            self._reset_routing()

    def detach(self, name: str) -> None:
        """Unload an adapter; answers still being generated with it end with an error at their next token."""
        with self._model_lock:
            if name in self.adapters and self.peft is not None:
                self.peft.delete_adapter(name)
                if self.decoder is not None:
                    self.decoder.remove_adapter(name)
                del self.adapters[name]
                self._reset_routing()

    # --- generation ---

    def submit(self, prompt: list[int], params: SamplingParams, *, adapter: str | None, end_ids: set[int],
               on_event: Callable) -> Generation:
        generation = Generation(prompt, params, adapter, end_ids, self.context, on_event, self.tokenizer)
        with self._wake:
            self._waiting.append(generation)
            self._wake.notify()
        return generation

    def warm_up(self, adapter: str | None, end_ids: set[int], timeout: float = 120.0) -> None:
        """One token through the scheduler: proves the model (and adapter) answer."""
        warm_up(self, adapter, end_ids, timeout, "the model did not answer its warm-up in time")

    def call(self, fn: Callable):
        """Run `fn()` on the scheduler thread (the one with the cores) between two decode steps; return its
        result or raise its error."""
        task = Task(fn)
        with self._wake:
            self._tasks.append(task)
            self._wake.notify()
        return task.result()

    def loss(self, conversations: list, adapter: str | None) -> tuple[float, int]:
        """Summed cross-entropy and token count over the trained tokens of rendered conversations
        (`RenderedChat`), with `adapter` or the base model: validation loss as training measures it."""
        @torch.no_grad()  # here: no_grad holds for the thread that runs it
        def score() -> tuple[float, int]:
            if adapter and adapter not in self.adapters:
                raise RuntimeError(f"the model {adapter} is not loaded")
            total, count = 0.0, 0
            for chat in conversations:
                ids, mask = torch.tensor([chat.input_ids]), torch.tensor(chat.loss_mask[1:])
                if not mask.any():
                    continue
                logits = self._forward(ids, None, None, None, [adapter], keep=0).logits[0, :-1].float()
                losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
                total, count = total + float(losses[mask].sum()), count + int(mask.sum())
            return total, count
        return self.call(score)

    def _run(self, weights: str, loaded: threading.Event, failure: list) -> None:
        use_all_cores_here()
        try:
            self._load(weights)
        except Exception as exc:
            failure.append(exc)
            return
        finally:
            loaded.set()
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._batch.rows and not self._tasks:
                    self._wake.wait()
                if self._closed:
                    break
                task = self._tasks.popleft() if self._tasks else None
                free = (self._batch.max_rows or self.max_batch) - len(self._batch.rows)
                candidates = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            with self._model_lock:
                if task is not None:
                    task.run()
                self._drop_stale()
                newcomers = self._newcomers(candidates)
                if newcomers:
                    self._guarded(newcomers, lambda: self._prefill(newcomers))
                if self._batch.rows:
                    self._guarded(list(self._batch.rows), self._decode)
        self._end_everything("the model was unloaded")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the scheduler thread after its current pass; answers and tasks still pending end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _end_everything(self, why: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
            tasks, self._tasks = list(self._tasks), deque()
        for g in waiting + list(self._batch.rows):
            if g.finish_reason is None:
                g.finish_reason = "error"
                try:
                    g.on_event("error", why)
                except Exception:  # a listener that fails cannot be told; the engine is stopping anyway
                    pass
        for task in tasks:
            task.error = RuntimeError(why)
            task.done.set()

    def _guarded(self, generations: list[Generation], step: Callable) -> None:
        """Run a forward pass; a fault ends the generations it was for, not the engine."""
        try:
            step()
        except Exception as exc:
            for g in generations:
                if g.finish_reason is None:
                    g.finish_reason = "error"
                    try:
                        g.on_event("error", f"{type(exc).__name__}: {exc}")
                    except Exception:  # a listener that fails cannot be told; the engine goes on
                        pass
            self._batch.keep([g for g in self._batch.rows if g.finish_reason is None])

    def _drop_stale(self) -> None:
        """Leave out cancelled rows and rows whose adapter was detached before the next pass."""
        for g in self._batch.rows:
            if g.adapter and g.adapter not in self.adapters and g.finish_reason is None:
                g.finish_reason = "error"
                g.on_event("error", f"the model {g.adapter} was unloaded while answering")
        self._batch.keep([g for g in self._batch.rows if g.finish_reason is None and not g.cancelled])

    def _newcomers(self, candidates: list[Generation]) -> list[Generation]:
        """The waiting generations that join now: in order, while their prompts' uncached tokens stay within
        PROMPT_TOKENS_PER_PASS (the first always joins), and one at a time where the batch takes prompts alone.
        The others go back to the front of the queue; cancelled ones and those whose adapter went away end."""
        chosen, cost = [], 0
        for i, g in enumerate(candidates):
            if g.cancelled:
                continue
            if g.adapter and g.adapter not in self.adapters:
                g.finish_reason = "error"
                g.on_event("error", f"the model {g.adapter} was unloaded before answering")
                continue
            cost += self._batch.prompt_cost(g)
            if chosen and (cost > PROMPT_TOKENS_PER_PASS or not self._batch.together):
                with self._wake:
                    self._waiting.extendleft(reversed(candidates[i:]))
                break
            chosen.append(g)
        return chosen

    def _prefill(self, newcomers: list[Generation]) -> None:
        """Process the newcomers' prompts (in one pass where the batch allows), take each one's first token, and
        let them join the batch."""
        logits = self._batch.start(newcomers)
        for g, row in zip(newcomers, logits):
            self._accept(g, self._sample(g, row))
        if any(g.finish_reason is not None for g in newcomers):
            self._batch.keep([r for r in self._batch.rows if r.finish_reason is None])

    def _decode(self) -> None:
        """One token for every row of the batch, in one forward pass."""
        rows = list(self._batch.rows)
        logits = self._batch.step()
        plain = [i for i, g in enumerate(rows) if _plain_greedy(g.params)]
        greedy = dict(zip(plain, logits[plain].max(-1).indices.tolist())) if len(plain) > 1 else {}
        for i, g in enumerate(rows):
            self._accept(g, greedy[i] if i in greedy else self._sample(g, logits[i]))
        self._batch.keep([g for g in rows if g.finish_reason is None])

    def _forward(self, ids, cache, mask, positions, adapters: list[str | None], keep: int = 1):
        inputs = {"input_ids": ids, "cache": cache, "attention_mask": mask, "position_ids": positions,
                  "use_cache": keep == 1, "logits_to_keep": keep}
        if self.peft is None:
            return self.model(**inputs)
        wanted = set(adapters)
        if len(wanted) == 1:  # the common case: one model for the whole batch, no per-row routing
            self._route(wanted.pop())
            return self.peft(**inputs)
        # PEFT's mixed-adapter batch: each row through its own LoRA weights, "__base__" rows through none
        self._route("mixed")
        return self.peft(**inputs, adapter_names=[a or "__base__" for a in adapters])

    def _reset_routing(self) -> None:
        """After loading or deleting an adapter: every LoRA layer on, the next pass routes again."""
        self.peft.base_model.enable_adapter_layers()
        self._routed = "mixed"

    def _route(self, adapter: str | None) -> None:
        """Switch the LoRA layers to `adapter` (None: off; "mixed": on, rows choose) only when it changes:
        switching walks every layer of the model."""
        if adapter == self._routed:
            return
        if adapter is None:
            self.peft.base_model.disable_adapter_layers()
        else:
            if self._routed is None:
                self.peft.base_model.enable_adapter_layers()
            if adapter != "mixed":
                self.peft.set_adapter(adapter)
        self._routed = adapter

    def _accept(self, g: Generation, token: int) -> None:
        """Record a sampled token and report what became final."""
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
            token = int(logits.max(0).indices)  # the first largest, as argmax, at a sixth of its cost on the CPU
        else:
            token = draw(torch.softmax(logits / p.temperature, dim=-1), p.top_p, g.generator)
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
        text = g.text_so_far.text(g.tokens)
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
        text = g.text_so_far.text(g.tokens)
        cuts = [text.find(s) for s in g.params.stop if s in text]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        self._send(g, text)
        g.finish_reason = reason
        g.on_event("done", reason)


# Every engine's scheduler thread is a daemon: at interpreter exit one may still be inside torch while the
# interpreter tears down what that code uses (the process then aborts: "terminate called without an active
# exception"). So each engine is stopped, between two passes, before that.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    for engine in list(_engines):
        engine.close(timeout=5.0)


PROMPT_TOKENS_PER_PASS = 512  # a burst of requests joins in passes of about this many prompt tokens to compute
# (~70 ms on 2 cores for SmolLM2-135M), so the answers already running wait at most about that long for a token

NUCLEUS_CANDIDATES = 1024  # top_p looks for its tokens among this many most likely ones first


def draw(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """A token drawn from `probs`, restricted to the smallest set of most likely tokens whose probabilities
    reach `top_p` (renormalised), with one uniform number from `generator` and the inverse of the cumulative
    distribution. Over a 49k-token vocabulary `torch.multinomial` takes ~0.9 ms and sorting ~2.6 ms on the CPU;
    this takes about a tenth, and the nucleus is the same one sorting finds."""
    order = None
    if top_p < 1.0:
        full = probs
        probs, order = full.topk(min(NUCLEUS_CANDIDATES, len(full)))  # sorted, most likely first
        if float(probs.sum()) < top_p and len(probs) < len(full):  # a flat distribution: the nucleus is wider
            probs, order = full.sort(descending=True)
        keep = max(1, int((probs.cumsum(0) - probs < top_p).sum()))
        probs, order = probs[:keep], order[:keep]
    cdf = probs.double().cumsum(0)
    u = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
    index = min(int(torch.searchsorted(cdf, u, right=True)), len(cdf) - 1)
    return index if order is None else int(order[index])


def _plain_greedy(p: SamplingParams) -> bool:
    """Greedy with nothing per row (penalties, log probabilities): such rows are decided together."""
    return p.temperature == 0 and not p.logprobs and not (p.presence_penalty or p.frequency_penalty)


def warm_up(engine, adapter: str | None, end_ids: set[int], timeout: float, late: str) -> None:
    """One greedy token from `engine` (this module's or a remote one) through its `submit`; raises with the
    engine's error, or `late` when no answer came within `timeout` seconds."""
    done, failure = threading.Event(), []

    def on_event(kind, payload):
        if kind == "error":
            failure.append(payload)
        if kind in ("done", "error"):
            done.set()

    prompt = engine.tokenizer("Hello", add_special_tokens=False)["input_ids"] or [0]
    engine.submit(prompt, SamplingParams(max_tokens=1, temperature=0), adapter=adapter, end_ids=end_ids,
                  on_event=on_event)
    if not done.wait(timeout) or failure:
        raise RuntimeError(getattr(failure[0], "message", failure[0]) if failure else late)
