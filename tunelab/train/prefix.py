"""Shared-prefix training: the tokens every conversation of a batch starts with are computed once, not per sample.

Fine-tuning sets repeat one system message in every example (75 of ~290 tokens in the travel data). The prefix
runs through the decoder once; its keys and values become leaf tensors that each conversation's remainder attends
to through the KV cache. Each remainder's backward pass accumulates gradients into those leaves, and one final
backward pass carries them through the prefix computation. The gradients are the same as running every
conversation in full (up to float rounding), at the cost of one prefix instead of `batch_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.samples import Sample

MIN_SHARED = 16  # below this the bookkeeping costs more than it saves


@dataclass
class SharedPrefix:
    length: int
    keys: list[torch.Tensor]  # per layer, detached leaves the remainders attend to
    values: list[torch.Tensor]
    computed: list[torch.Tensor]  # the same tensors still attached to the prefix's graph (training only)
    config: object

    def cache(self):
        """A fresh KV cache holding the prefix; the cache grows in place, so each conversation gets its own."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values)), config=self.config)

    def backward(self) -> None:
        """Carry the gradients the remainders left on the prefix's keys and values through the prefix."""
        leaves = [*self.keys, *self.values]
        pairs = [(t, leaf.grad) for t, leaf in zip(self.computed, leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


def shared_length(batch: list[Sample]) -> int:
    """Tokens all samples start with, stopping before the first position whose next token is trained."""
    if len(batch) < 2:
        return 0
    first = batch[0].input_ids
    limit = min(min(s.length for s in batch) - 1, *(int(s.positions[0]) for s in batch if s.n_trained))
    same = torch.ones(limit, dtype=torch.bool)
    for sample in batch[1:]:
        same &= sample.input_ids[:limit] == first[:limit]
    length = int(same.long().cumprod(0).sum()) if limit > 0 else 0
    return length if length >= MIN_SHARED else 0


def compute_prefix(model, lean, batch: list[Sample]) -> SharedPrefix | None:
    """Run the shared prefix of `batch` through the decoder once; None when sharing does not apply. `model` is
    the model being trained (a PEFT or transformers model), `lean` the lean forward that runs it (lean_forward.py)
    or None for transformers' forward."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = getattr(causal.config, "layer_types", None) or []
    if getattr(causal.config, "sliding_window", None) or any(t != "full_attention" for t in layer_types):
        return None  # sliding-window caches drop old keys; keep those models on the plain path
    length = shared_length(batch)
    if not length:
        return None
    ids = batch[0].input_ids[:length].to(causal.device)
    if lean:
        _, kept = lean(ids, keep_kv=True)
        computed_k, computed_v = [k for k, _ in kept], [v for _, v in kept]
    else:
        cache = causal.get_decoder()(input_ids=ids[None], use_cache=True).cache
        computed_k = [layer.keys for layer in cache.layers]
        computed_v = [layer.values for layer in cache.layers]
    grad = torch.is_grad_enabled()
    keys = [k.detach().requires_grad_(grad) for k in computed_k]
    values = [v.detach().requires_grad_(grad) for v in computed_v]
    return SharedPrefix(length, keys, values, computed_k + computed_v if grad else [], causal.config)
