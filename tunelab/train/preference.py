"""Preference fine-tuning (DPO): the loss on pairs of a preferred and a non-preferred answer, its training step
and evaluation, and the reference log-probabilities it measures against.

DPO (Rafailov et al., 2023) raises the model's log-probability of the preferred answer relative to a reference
model, and lowers that of the non-preferred one, in one classification loss per pair:

    loss = −log σ(β · [(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))])

averaged over the pairs, each log-probability summed over the answer's tokens (the final assistant turn; the
prompt is context). β (0.1 by default) sets how far the model may move from the reference: higher is more
conservative.

The reference is the model the run starts from — the frozen base with the new adapter, whose LoRA B matrices are
zero so it computes exactly the base model; or, continuing a supervised fine-tune (`ft:` model), that fine-tune.
Rather than keep a second copy of the model, its log-probabilities of every pair's two answers are computed once,
without gradients, before the first step (as TRL's `precompute_ref_log_probs` does) and kept in the run directory
(`reference_logps.safetensors`, written beside and renamed), so a resumed run measures against exactly the same
numbers. One extra forward pass per pair, instead of one per pair per epoch.

The rest is the supervised recipe's (recipe.py): the same forward (lean or transformers'), shared-prefix reuse,
packing, checkpoints, metrics and N-process gradient sums.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ..crashpoints import crash_point
from ..data.samples import PairSample, Sample
from ..errors import CheckpointError
from .distributed import Group
from .loss import head_loss
from .metrics import Reporter
from .prefix import compute_prefix
from .recipe import PACK_TOKENS, _autocast, _causal, _packs, trained_hidden

REFERENCE_FILE = "reference_logps.safetensors"


def answer_logps(model, lean, samples: list[Sample], prefix=None) -> torch.Tensor:
    """Each sample's log-probability of its trained tokens (its answer), summed over them: [len(samples)]."""
    causal = _causal(model)
    hidden = trained_hidden(model, lean, samples, prefix)
    targets = torch.cat([s.targets for s in samples]).to(hidden.device)
    rows, _ = head_loss(causal.get_output_embeddings(), hidden, targets,
                        getattr(causal.config, "final_logit_softcapping", None), per_row=True)
    return -torch.stack([part.sum() for part in rows.float().split([s.n_trained for s in samples])])


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, reference: torch.Tensor, beta: float,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: DPO's sigmoid loss and the reward margin β·(chosen log-ratio − rejected log-ratio).
    `reference` is [pairs, 2]: the reference model's log-probabilities of (chosen, rejected)."""
    margin = beta * ((chosen - reference[:, 0]) - (rejected - reference[:, 1]))
    return -F.logsigmoid(margin), margin


def _policy(model, lean, pairs: list[PairSample], prefix) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's log-probabilities of the chosen and of the rejected answers of `pairs` (one forward pass)."""
    with _autocast(model):
        logps = answer_logps(model, lean, [p.chosen for p in pairs] + [p.rejected for p in pairs], prefix)
    return logps[:len(pairs)], logps[len(pairs):]


def _sides(pairs: list[PairSample]) -> list[Sample]:
    return [s for p in pairs for s in (p.chosen, p.rejected)]


def _reference(pairs: list[PairSample], device) -> torch.Tensor:
    if any(p.reference is None for p in pairs):
        raise CheckpointError("a preference pair has no reference log-probabilities; the run computes them first")
    return torch.tensor([p.reference for p in pairs], dtype=torch.float32, device=device)


def dpo_step(model, lean, batch: list[PairSample], optimizer, scheduler, group: Group | None = None,
             ) -> tuple[float, None, int, dict]:
    """One optimizer step of DPO over `batch`: (mean loss, no token accuracy, tokens, the DPO metrics).
    Each pack of pairs is backpropagated as soon as its loss is known (a pair's loss depends on that pair alone),
    so no more activations are held than in a supervised step; with `group`, this rank takes its share of the
    pairs, normalised by the whole batch, and the gradients and metrics are summed across ranks."""
    n = len(batch)
    beta = batch[0].beta
    optimizer.zero_grad(set_to_none=True)
    mine = group.share(batch) if group else batch
    prefix = compute_prefix(model, lean, _sides(mine))
    sums = torch.zeros(5, dtype=torch.float64)  # loss, margin, accuracy, chosen log-p, rejected log-p
    for part in _packs(mine, PACK_TOKENS if lean else 0):
        chosen, rejected = _policy(model, lean, part, prefix)
        losses, margins = dpo_loss(chosen, rejected, _reference(part, chosen.device), beta)
        (losses.sum() / n).backward()
        sums += torch.tensor([losses.sum().item(), margins.sum().item(), (margins > 0).sum().item(),
                              chosen.sum().item(), rejected.sum().item()], dtype=torch.float64)
    if prefix:
        prefix.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    totals = sums.tolist()
    if group:
        group.sum_gradients(trainable)
        totals = group.sum(*totals)
    crash_point("step.before_optimizer")
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    crash_point("step.after_optimizer")
    loss, margin, right, chosen_logp, rejected_logp = (v / n for v in totals)
    return loss, None, sum(p.length for p in batch), {
        "train_reward_margin": margin, "train_reward_accuracy": right, "train_chosen_logp": chosen_logp,
        "train_rejected_logp": rejected_logp}


@torch.no_grad()
def dpo_evaluate(model, lean, pairs: list[PairSample], group: Group | None = None) -> tuple[float, None, dict]:
    """DPO's mean loss over `pairs`, with the mean reward margin and reward accuracy (split across `group`)."""
    model.eval()
    mine = group.share(pairs) if group else pairs
    prefix = compute_prefix(model, lean, _sides(mine))
    loss = margin = right = 0.0
    for part in _packs(mine, 2 * PACK_TOKENS if lean else 0):
        chosen, rejected = _policy(model, lean, part, prefix)
        losses, margins = dpo_loss(chosen, rejected, _reference(part, chosen.device), pairs[0].beta)
        loss, margin, right = loss + losses.sum().item(), margin + margins.sum().item(), right + (margins > 0).sum().item()
        crash_point("validation.batch")
    if group:
        loss, margin, right = group.sum(loss, margin, right)
    model.train()
    n = len(pairs)
    return loss / n, None, {"reward_margin": margin / n, "reward_accuracy": right / n}


@torch.no_grad()
def reference_logps(model, lean, pairs: list[PairSample], group: Group | None = None) -> torch.Tensor:
    """The current model's log-probabilities of each pair's (chosen, rejected) answers: [pairs, 2], float32.
    With `group`, each rank computes its share and the shares are summed into the whole on every rank."""
    model.eval()
    found = torch.zeros(len(pairs), 2, dtype=torch.float32)
    index = {id(p): i for i, p in enumerate(pairs)}
    for part in _packs(group.share(pairs) if group else pairs, 2 * PACK_TOKENS if lean else 0):
        chosen, rejected = _policy(model, lean, part, None)
        for pair, c, r in zip(part, chosen.tolist(), rejected.tolist()):
            found[index[id(pair)]] = torch.tensor([c, r])
    model.train()
    if group:  # each rank filled its share, zeros elsewhere: the sum is the whole
        found = torch.tensor(group.sum(*found.flatten().tolist()), dtype=torch.float32).view(-1, 2)
    return found


def attach_references(model, lean, out: Path, train_set: list[PairSample], valid_set: list[PairSample],
                      beta: float, resume: bool, reporter: Reporter, group: Group | None = None) -> None:
    """Give every pair its reference log-probabilities and the run's β: computed with the starting weights and
    written to the run directory for a new run (rank 0 writes; every rank computes its share), read back from it
    when resuming, so a resumed run scores against exactly the numbers the interrupted one used."""
    from safetensors.torch import load_file, save_file

    path = out / REFERENCE_FILE
    if resume:
        if not path.exists():
            raise CheckpointError(f"{path} is missing: the run's reference log-probabilities cannot be recomputed "
                                  "once training has moved the weights; start a new run")
        saved = load_file(path)
        train, valid = saved["train"], saved.get("valid", torch.zeros(0, 2))
        if train.shape[0] != len(train_set) or valid.shape[0] != len(valid_set):
            raise CheckpointError(f"{path} does not hold one reference per pair of the run's files")
        reporter.message("Reference log-probabilities of the pairs loaded from the run")
    else:
        started = time.perf_counter()
        train = reference_logps(model, lean, train_set, group)
        valid = reference_logps(model, lean, valid_set, group) if valid_set else torch.zeros(0, 2)
        if group is None or group.main:
            beside = path.with_name(f".{path.name}.tmp")
            save_file({"train": train.contiguous(), "valid": valid.contiguous()}, beside)
            with beside.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(beside, path)
        if group:
            group.barrier()
        reporter.message(f"Reference log-probabilities of {len(train_set)} training and {len(valid_set)} "
                         f"validation pairs computed with the starting model in {time.perf_counter() - started:.1f} s")
    for pairs, values in ((train_set, train), (valid_set, valid)):
        for pair, (chosen, rejected) in zip(pairs, values.tolist()):
            pair.reference, pair.beta = (chosen, rejected), beta
