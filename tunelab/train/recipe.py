"""The fine-tuning recipe, top to bottom: setup_data → setup_model → setup_optimizer → restore → the loop
(train_step over loss_step, evaluate, checkpoints) → save.

    tunelab train --model SmolLM2-135M-Instruct --train examples/travel/train.jsonl --suffix ft-travel

Plain PyTorch over transformers + PEFT, so metrics, checkpoints, pause/resume and the fast paths stay in our
hands. Each conversation is one sample; the loss covers exactly the trained assistant tokens. Speed on a CPU
comes from spending no FLOPs on padding (a batch's conversations are packed one after the other, or run one at a
time), computing a shared system message once per batch (prefix.py), and projecting onto the vocabulary only at
trained positions, where the loss needs logits, in row chunks that never hold the whole logits tensor (loss.py).

On N processes (`torchrun`, distributed.py) every rank runs this same recipe on its share of each global batch;
the gradients and metrics are summed across ranks, and rank 0 alone writes files and reports. Without a group
(one process) nothing of torch.distributed is touched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from .. import __version__
from ..config import get_settings
from ..crashpoints import crash_point
from ..data.samples import PairSample, Sample, load_pairs, load_samples
from ..errors import CheckpointError, InvalidRequest
from ..models.catalog import LocalModel, resolve_model
from ..models.load import load_causal_lm, load_tokenizer
from . import best, checkpoints
from .config import Hyperparameters, TrainConfig, resolve
from .distributed import Group
from .metrics import Reporter, ResultsCsv, StepMetrics, columns_for
from ..models.llama_block import unsupported
from .lean_forward import LeanForward, lean_forward
from .loss import head_loss
from .precision import use_bf16_matmuls
from .prefix import SharedPrefix, compute_prefix


@dataclass
class RunResult:
    out: Path
    weights: Path  # the adapter directory (LoRA) or model directory (full)
    steps: int
    trained_tokens: int
    metrics: dict  # the last step's metrics
    stopped_early: bool  # interrupted: a checkpoint was written and `--resume` continues
    recommendation: dict | None = None  # the checkpoint to use, and why (train/best.py); None without validation


def run(config: TrainConfig, reporter: Reporter, *, resume: bool = False,
        stop: threading.Event | None = None, group: Group | None = None) -> RunResult:
    """Fine-tune `config.model` on `config.train_file`; `stop.set()` (or Ctrl-C) checkpoints and returns early.
    With `group` (N processes), this rank trains on its share of each batch; only rank 0 writes and reports."""
    stop = stop or threading.Event()
    main = group is None or group.main
    if config.early_stopping_patience and config.validation_file is None:
        raise InvalidRequest("early stopping watches the validation loss: it needs a validation file",
                             param="early_stopping_patience")
    if group and (config.out is None or config.seed is None):
        raise InvalidRequest("a run on several processes needs its --out and --seed fixed before it starts, so "
                             "every process trains the same run", param="out" if config.out is None else "seed")
    base = resolve_model(config.model)
    tokenizer, train_set, valid_set = setup_data(config, base, reporter)
    out = config.out or get_settings().runs_dir / f"{base.name}-{config.suffix or 'run'}-{datetime.now():%Y%m%d-%H%M%S}"
    hp = _hyperparameters(out, config, resolve(config, len(train_set), len(valid_set)), resume, check=main)
    torch.manual_seed(hp.seed)
    model, lean = setup_model(base, hp, group.device if group else None)
    if hp.method == "lora" and lean is None:  # one line, in the run's messages (a job's events), saying why
        reporter.message(f"Training through transformers' forward: tunelab's fast LoRA forward steps aside for "
                         f"{unsupported(model, 'training') or 'this adapter configuration'}")
    if not resume and main:  # only now, so a run that could not start leaves no directory behind
        _write_config(out, config, hp)
    optimizer, scheduler = setup_optimizer(model, hp)
    ckpt_root = out / "checkpoints"
    step, last = restore(model, optimizer, scheduler, ckpt_root, config, hp, resume, reporter, group)
    if hp.objective == "dpo":  # the reference: the starting model's log-probabilities, once, kept in the run
        from .preference import attach_references
        attach_references(model, lean, out, train_set, valid_set, hp.beta, resume, reporter, group)
    results = ResultsCsv(out / "results.csv", resumed_at=step, columns=columns_for(hp.objective)) if main else None

    reporter.start(hp.model_dump(), hp.total_steps, step)
    settings = get_settings()
    every_steps = config.checkpoint_every_steps or settings.checkpoint_every_steps
    every_seconds = 60 * (config.checkpoint_every_minutes or settings.checkpoint_every_minutes)
    saved_at = time.monotonic()
    trained_tokens = sum(s.length for s in train_set) * hp.n_epochs
    clock = _Clock()
    current_epoch = -1
    tracker = best.Tracker.from_checkpoints(ckpt_root)  # the epoch-end validation figures: best checkpoint, patience
    patience = config.early_stopping_patience if valid_set else None
    # A run that resumes from the checkpoint where early stopping had already decided (a crash in between) stops.
    early = bool(patience and 0 < step < hp.total_steps and step % hp.steps_per_epoch == 0
                 and tracker.epochs_since_best >= patience)
    # On N processes the loop runs while no rank has seen a stop: the ranks agree at every step's end.
    stopping = group.any(stop.is_set())[0] if group else False
    with _stop_on_signals(stop):
        while not early and step < hp.total_steps and not (stopping if group else stop.is_set()):
            epoch, position = divmod(step, hp.steps_per_epoch)
            if position == 0 or epoch != current_epoch:
                order, current_epoch = epoch_order(len(train_set), hp, epoch), epoch
            batch = [train_set[i] for i in order[position]]
            model.train()
            started = time.perf_counter()
            loss, accuracy, tokens, *extra = train_step(model, lean, batch, optimizer, scheduler, group)
            clock.tick(tokens, time.perf_counter() - started)
            step += 1
            metrics = StepMetrics(step, hp.total_steps, epoch + 1, loss, accuracy, tokens, clock.tokens_per_second,
                                  clock.eta(hp.total_steps - step), gpu_memory_mb=_gpu_memory_mb(model),
                                  extra=extra[0] if extra else {})
            if valid_set and step % hp.eval_every == 0:
                k = step // hp.eval_every - 1
                chunk = [valid_set[(k * hp.batch_size + j) % len(valid_set)] for j in range(hp.batch_size)]
                metrics.record("valid", evaluate(model, lean, chunk, group))
            epoch_done = step % hp.steps_per_epoch == 0 or step == hp.total_steps
            if valid_set and epoch_done:
                metrics.record("full_valid", evaluate(model, lean, valid_set, group))
            if main:
                results.write(metrics)
                crash_point("results.after_row")
                reporter.step(metrics)
            last = metrics.openai()
            # Every epoch, and within a long one every `every_steps` steps or `every_seconds` of training.
            due = ((every_steps and step % every_steps == 0)
                   or (every_seconds and time.monotonic() - saved_at >= every_seconds))
            stopping = stop.is_set()
            if group:  # one vote (MAX) so that all ranks stop, and checkpoint, at the same step
                stopping, due = group.any(stopping, due)
            if valid_set and epoch_done:
                tracker.observe(epoch + 1, step, metrics.full_valid_loss,
                                checkpoints.checkpoint_path(ckpt_root, step).name)
            if epoch_done or stopping or due:
                if main:
                    path = _save_checkpoint(model, optimizer, scheduler, ckpt_root, step, hp, last,
                                            config.keep_checkpoints, keep_step=tracker.best and tracker.best.step)
                    reporter.checkpoint(step, path, last)
                if group:
                    group.barrier()
                saved_at = time.monotonic()
            # Every rank measured the same summed loss, so every rank makes the same decision here.
            if patience and epoch_done and step < hp.total_steps and tracker.epochs_since_best >= patience:
                early = True
                break

    if early:  # the fine-tune is the best checkpoint's weights, not the last epoch's
        found, epochs = tracker.best, tracker.points[-1].epoch
        trained_tokens = sum(s.length for s in train_set) * epochs
        if main:
            _load_weights(model, checkpoints.checkpoint_path(ckpt_root, found.step), hp)
            reporter.message(f"Early stopping: the full validation loss has not improved for {patience} epoch(s) "
                             f"since epoch {found.epoch} ({found.value:.3f}); training stopped after epoch "
                             f"{epochs} of {hp.n_epochs}, and the fine-tuned model is the weights of "
                             f"epoch {found.epoch}'s checkpoint (step {found.step}), not the last epoch's")

    stopped = step < hp.total_steps and not early
    weights = out / ("adapter" if hp.method == "lora" else "model")
    if not stopped and main:
        _save_final(model, tokenizer, weights, out, base, config, hp, step, trained_tokens, last)
    reporter.finish()
    found = tracker.recommendation(stopped_early=early)
    return RunResult(out, weights, step, trained_tokens if not stopped else 0, last, stopped,
                     found.to_dict() if found else None)


def setup_data(config: TrainConfig, base: LocalModel, reporter: Reporter) -> tuple[object, list[Sample], list[Sample]]:
    """The tokenizer and the training and validation samples (for DPO, pairs of samples), cut to the context
    (`max_seq_len`, else the model's); the cut ones are reported by line."""
    tokenizer = load_tokenizer(base.path)
    max_len = config.max_seq_len or base.meta.get("context_length") or 2048
    load = load_pairs if config.objective == "dpo" else load_samples
    train_set = load(config.train_file, tokenizer, max_len, param="training_file")
    valid_set = load(config.validation_file, tokenizer, max_len, param="validation_file") \
        if config.validation_file else []
    for name, samples in (("training", train_set), ("validation", valid_set)):
        cut = [s.line for s in samples if s.truncated]
        if cut:
            reporter.message(f"{len(cut)} {name} example(s) longer than {max_len} tokens were truncated "
                             f"(lines {', '.join(map(str, cut[:10]))}{'…' if len(cut) > 10 else ''})")
    return tokenizer, train_set, valid_set


def setup_model(base: LocalModel, hp: Hyperparameters, device: torch.device | None = None,
                ) -> tuple[torch.nn.Module, LeanForward | None]:
    """Load the base model in fp32 (on `device`, else on the GPU when there is one); for LoRA, wrap every linear
    layer but the LM head with rank-r adapters (the frozen base weights bf16 where the run multiplies in bf16).
    Returns the model and the forward that trains it: the lean forward (lean_forward.py) where it applies, else
    None for transformers' own."""
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(base.path)
    if device is not None:
        model.to(device)
    elif torch.cuda.is_available():
        model.to("cuda")
    model.config.use_cache = False
    if hp.method == "full":
        return model, None
    llama = unsupported(model, "training") is None  # the lean forward runs it and fuses the layers' base weights itself
    if hp.matmul_precision == "bf16":
        use_bf16_matmuls(model, head_only=llama)
    lora = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    return model, lean_forward(model, hp.matmul_precision)


def setup_optimizer(model: torch.nn.Module, hp: Hyperparameters):
    """AdamW over the trainable parameters, without weight decay, and its learning rate schedule: linear
    warm-up, then linear decay to zero at the last step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate,
                                  weight_decay=0.0)

    def factor(step: int) -> float:
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        return max(0.0, (hp.total_steps - step) / max(1, hp.total_steps - hp.warmup_steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore(model, optimizer, scheduler, root: Path, config: TrainConfig, hp: Hyperparameters, resume: bool,
            reporter: Reporter, group: Group | None = None) -> tuple[int, dict]:
    """The step the run starts after and that step's metrics: 0 for a new run (from `config.init_adapter`'s weights
    when it continues an earlier fine-tune), or with `resume` the latest complete checkpoint's, whose weights,
    optimizer and scheduler state are loaded. Partial checkpoints a crash left behind are removed first; the
    checkpoint resumed from is reported again, in case the run stopped before it could report it. On N processes
    rank 0 removes the partial ones, then every rank loads the same checkpoint (and starts from rank 0's weights)."""
    if group is None or group.main:
        checkpoints.clean_partial(root)
    if group:
        group.barrier()
    if not resume:
        if config.init_adapter:
            _load_weights(model, config.init_adapter, hp)
        if group:
            group.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
        return 0, {}
    latest = checkpoints.latest_checkpoint(root)
    if latest is None:
        raise InvalidRequest(f"no complete checkpoint in {root} to resume from", param="resume")
    _load_weights(model, latest, hp)
    state = checkpoints.load_training_state(latest, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    reporter.message(f"Resuming from {latest.name} (epoch {state['step'] // hp.steps_per_epoch + 1})")
    reporter.checkpoint(state["step"], latest, state["metrics"])
    return state["step"], state["metrics"]


def epoch_order(n: int, hp: Hyperparameters, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(hp.seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + hp.batch_size] for i in range(0, n, hp.batch_size)]


# Conversations packed into one pass of the lean forward, up to this many tokens: larger products are faster,
# but a training pass holds every layer's activations for its backward (~1.2 MB per token for SmolLM2).
PACK_TOKENS = 2048


def loss_step(model: torch.nn.Module, lean: LeanForward | None, samples: list[Sample],
              prefix: SharedPrefix | None = None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the trained tokens of `samples`, and how many of them the model predicts right.

    The decoder runs over each conversation (after `prefix`, when they share one): the `lean` forward packs them
    all into one pass; without it, transformers' forward takes them one by one. The vocabulary projection (a 49k × 576
    matmul per token for SmolLM2) runs only at positions whose next token is trained.
    """
    causal = _causal(model)
    hidden = trained_hidden(model, lean, samples, prefix)
    return head_loss(causal.get_output_embeddings(), hidden, torch.cat([s.targets for s in samples]).to(hidden.device),
                     getattr(causal.config, "final_logit_softcapping", None))


def trained_hidden(model: torch.nn.Module, lean: LeanForward | None, samples: list[Sample],
                   prefix: SharedPrefix | None = None) -> torch.Tensor:
    """The final hidden states at the trained positions of `samples`, one row per trained token, in order: what
    the vocabulary head turns into the loss (`loss_step`, and the per-answer log-probabilities of preference.py)."""
    causal = _causal(model)
    device = causal.device
    start = prefix.length if prefix else 0
    cached = list(zip(prefix.keys, prefix.values)) if prefix else None
    if lean:
        lengths = [s.length - start for s in samples]
        hidden = lean(torch.cat([s.input_ids[start:] for s in samples]).to(device), cached, lengths=lengths)
        offsets = [0, *itertools.accumulate(lengths)][:-1]
        rows = torch.cat([s.positions - start + offset for s, offset in zip(samples, offsets)])
        hidden = hidden[rows.to(device)]
    else:
        hidden = []
        for sample in samples:
            extra = {"cache": prefix.cache(), "use_cache": True} if prefix else {}
            out = causal.get_decoder()(input_ids=sample.input_ids[start:].to(device)[None], **extra)
            hidden.append(out.last_hidden_state[0][(sample.positions - start).to(device)])
        hidden = torch.cat(hidden)
    return hidden


def train_step(model, lean: LeanForward | None, batch: list[Sample], optimizer, scheduler,
               group: Group | None = None) -> tuple[float, float, int]:
    """One optimizer step over `batch`; the loss is the mean over all trained tokens of the batch. With `group`,
    this rank computes its share of the batch, normalised by the whole batch's trained tokens, and the summed
    gradients of all ranks make the same step one process takes. A batch of preference pairs takes DPO's step
    (preference.py), which also returns its own metrics."""
    if batch and isinstance(batch[0], PairSample):
        from .preference import dpo_step
        return dpo_step(model, lean, batch, optimizer, scheduler, group)
    n_trained = sum(s.n_trained for s in batch)
    total, correct = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    mine = group.share(batch) if group else batch
    prefix = compute_prefix(model, lean, mine)
    # No padding either way: the lean forward packs the batch into passes of up to PACK_TOKENS tokens;
    # transformers' forward takes one conversation at a time. The gradients accumulate.
    for part in _packs(mine, PACK_TOKENS if lean else 0):
        with _autocast(model):
            loss, right = loss_step(model, lean, part, prefix)
        (loss / n_trained).backward()
        total += loss.item()
        correct += right
    if prefix:
        prefix.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if group:  # explicit, not DistributedDataParallel: the lean forward never calls the hooked model.forward
        group.sum_gradients(trainable)
        total, correct = group.sum(total, correct)
    crash_point("step.before_optimizer")
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    crash_point("step.after_optimizer")
    return total / n_trained, correct / n_trained, sum(s.length for s in batch)


@torch.no_grad()
def evaluate(model, lean: LeanForward | None, samples: list[Sample], group: Group | None = None,
             ) -> tuple[float, float]:
    """Mean token loss and accuracy over `samples`, weighted by trained tokens; split across `group`'s ranks.
    Preference pairs are measured by DPO's loss instead (preference.py)."""
    if samples and isinstance(samples[0], PairSample):
        from .preference import dpo_evaluate
        return dpo_evaluate(model, lean, samples, group)
    model.eval()
    total, correct = 0.0, 0
    mine = group.share(samples) if group else samples
    prefix = compute_prefix(model, lean, mine)
    for part in _packs(mine, 2 * PACK_TOKENS if lean else 0):
        with _autocast(model):
            loss, right = loss_step(model, lean, part, prefix)  # no gradients: nothing is held for a backward
        total += loss.item()
        correct += right
        crash_point("validation.batch")
    if group:
        total, correct = group.sum(total, correct)
    model.train()
    n = sum(s.n_trained for s in samples)
    return total / n, correct / n


def _packs(samples: list[Sample], limit: int) -> list[list[Sample]]:
    """`samples` in order, in groups of up to `limit` tokens (a longer sample alone); `limit` 0: one each."""
    packs: list[list[Sample]] = []
    tokens = 0
    for sample in samples:
        if packs and tokens + sample.length <= limit:
            packs[-1].append(sample)
            tokens += sample.length
        else:
            packs.append([sample])
            tokens = sample.length
    return packs


def _autocast(model):
    """bf16 autocast where the model sits on a CUDA device; a no-op context on a CPU (the run's own precision)."""
    device = _causal(model).device
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _gpu_memory_mb(model) -> float | None:
    """Peak GPU memory this process allocated so far, on CUDA; None on a CPU."""
    device = _causal(model).device
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _causal(model):
    """The transformers model inside a PEFT wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _save_checkpoint(model, optimizer, scheduler, root: Path, step: int, hp: Hyperparameters, metrics: dict,
                     keep: int, keep_step: int | None = None) -> Path:
    state = {"step": step, "epoch": math.ceil(step / hp.steps_per_epoch), "scheduler": scheduler.state_dict(),
             "metrics": metrics}
    return checkpoints.save_checkpoint(root, step, write_weights=lambda d: _write_weights(model, d),
                                       optimizer=optimizer, state=state, keep=keep, keep_step=keep_step)


def _write_weights(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def _load_weights(model, checkpoint: Path, hp: Hyperparameters) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if hp.method == "lora":
        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        return
    state = {}
    for file in checkpoint.glob("*.safetensors"):
        if file.name not in ("optimizer.safetensors", "rng.safetensors"):
            state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if model.config.tie_word_embeddings and "lm_head" in k}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"checkpoint {checkpoint} does not match the model")


def _save_final(model, tokenizer, weights: Path, out: Path, base: LocalModel, config: TrainConfig,
                hp: Hyperparameters, steps: int, trained_tokens: int, metrics: dict) -> None:
    """Write the adapter (or model) with its tokenizer and chat template, and the run's manifest."""
    tmp = out / f".{weights.name}.tmp"
    _write_weights(model, tmp)
    tokenizer.save_pretrained(tmp)
    if weights.exists():
        import shutil
        shutil.rmtree(weights)
    tmp.rename(weights)
    crash_point("final.after_weights")
    manifest = {
        "tunelab_version": __version__, "created": int(time.time()), "base_model": base.name,
        "base_model_source": base.meta.get("source"), "method": hp.method, "objective": hp.objective,
        "beta": hp.beta, "suffix": config.suffix,
        "seed": hp.seed, "steps": steps, "trained_tokens": trained_tokens,
        "training_file": {"path": str(config.train_file), "sha256": _sha256(config.train_file)},
        "validation_file": ({"path": str(config.validation_file), "sha256": _sha256(config.validation_file)}
                            if config.validation_file else None),
        "chat_template": tokenizer.chat_template, "chat_template_source": base.chat_template_source,
        "final_metrics": metrics, "libraries": _library_versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _write_config(out: Path, config: TrainConfig, hp: Hyperparameters) -> None:
    """Record the run's settings and resolved hyperparameters (what a resumed run reads back)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"config": json.loads(config.model_dump_json()), "hyperparameters": hp.model_dump()}
    (out / "config.json").write_text(json.dumps(data, indent=2))


def _hyperparameters(out: Path, config: TrainConfig, hp: Hyperparameters, resume: bool,
                     check: bool = True) -> Hyperparameters:
    """The run's hyperparameters: `hp` for a new run directory, the recorded ones when resuming. `check`: refuse a
    directory that already holds a run (rank 0 only: on N processes it writes config.json while others look)."""
    saved = out / "config.json"
    if resume:
        if not saved.exists():
            raise InvalidRequest(f"{out} holds no run to resume (no config.json)", param="out")
        recorded = json.loads(saved.read_text())
        mine = json.loads(config.model_dump_json())
        changed = [k for k in ("model", "train_file", "validation_file", "method", "lora_rank", "objective")
                   if recorded["config"].get(k) != mine.get(k)]
        if changed:
            raise InvalidRequest(f"the run in {out} was started with different {', '.join(changed)}; "
                                 "resume it with the same settings or start a new --out", param=changed[0])
        return Hyperparameters(**recorded["hyperparameters"])
    if check and out.exists() and any(out.iterdir()):
        raise InvalidRequest(f"{out} already holds a run; pass --resume to continue it or choose another --out",
                             param="out")
    return hp


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _library_versions() -> dict:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "peft", "safetensors", "tokenizers")}


class _Clock:
    """Training throughput in real tokens per second, and a time-to-finish estimate from wall time per step."""

    def __init__(self):
        self.tokens = 0
        self.train_seconds = 0.0
        self.steps = 0
        self.started = time.perf_counter()

    def tick(self, tokens: int, train_seconds: float) -> None:
        self.tokens += tokens
        self.train_seconds += train_seconds
        self.steps += 1

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    def eta(self, remaining_steps: int) -> float:
        wall = time.perf_counter() - self.started
        return wall / self.steps * remaining_steps if self.steps else 0.0


@contextmanager
def _stop_on_signals(stop: threading.Event):
    """First Ctrl-C (or SIGTERM) asks for a checkpoint at the next step boundary; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

