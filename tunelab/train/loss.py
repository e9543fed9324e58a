"""The loss at the vocabulary: projection, cross-entropy and its gradient in one pass over row chunks.

With a 49k-word vocabulary the logits of one batch's trained positions are a [~1,000 × 49,152] tensor: ~190 MB in
fp32, several such tensors with the softmax, its backward and the dtype conversions, each written to fresh memory.
On a 2-core machine those passes cost more than the projection itself (about a third of a training step for
SmolLM2). When the head is frozen (LoRA), only the gradient with respect to the hidden states is needed, and it
can be computed right away: for a chunk of rows, logits → softmax − one-hot → back through the head. The logits
of a chunk stay in cache and nothing of vocabulary size outlives it; backward only scales the stored gradient.
The arithmetic is the same as `cross_entropy(head(hidden), targets, reduction="sum")` with a bf16 or fp32 head.
`per_row=True` returns each row's cross-entropy instead of the sum (preference training sums them per answer,
preference.py); the gradient is the same pass, scaled per row.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

CHUNK_ROWS = 64  # 64 × 49,152 fp32 logits = 12.5 MB: small enough to stay in cache, large enough for the matmul


def head_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
              softcap: float | None = None, per_row: bool = False) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of `head(hidden)` against `targets` ([N, hidden] → [N, vocab]) — with `per_row`, each
    row's ([N]) — and how many rows have the target's logit as their highest."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.requires_grad or bias is not None:  # a full fine-tune trains the head: the plain path has its grads
        logits = head(hidden).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        loss = F.cross_entropy(logits, targets, reduction="none" if per_row else "sum")
        with torch.no_grad():  # amax is ~8x faster than argmax over 49k logits
            correct = int((logits.gather(1, targets[:, None])[:, 0] >= logits.amax(-1)).sum())
        return loss, correct
    loss, correct, rows = _FrozenHeadLoss.apply(hidden, weight.detach(), targets, softcap)
    return (rows if per_row else loss), int(correct)


class _FrozenHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap):
        keep_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if keep_grad else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        per_row = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        rows = torch.arange(min(CHUNK_ROWS, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            h, t = hidden[start:start + CHUNK_ROWS], targets[start:start + CHUNK_ROWS]
            r = rows[:h.shape[0]]
            z = F.linear(h.to(weight.dtype), weight).float()
            if softcap:
                squashed = torch.tanh(z / softcap)
                z = squashed * softcap
            picked = z[r, t]
            top = z.amax(-1)
            correct += (picked >= top).sum()
            z.sub_(top[:, None]).exp_()  # z now holds exp(logit − max)
            norm = z.sum(-1)
            losses = norm.log() + top - picked
            per_row[start:start + CHUNK_ROWS] = losses
            total += losses.sum().double()
            if keep_grad:  # d loss / d logits = softmax − one-hot, then through the head
                z.div_(norm[:, None])
                z[r, t] -= 1
                if softcap:
                    z.mul_(1 - squashed * squashed)
                grad[start:start + CHUNK_ROWS] = (z.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total.to(hidden.dtype), correct, per_row.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output, _grad_correct, grad_rows):
        # The sum and the rows are two views of one loss: whichever the caller used carries the gradient
        # (the other's is zero), d loss_row / d hidden_row being the stored `grad` either way.
        (grad,) = ctx.saved_tensors
        return grad * (grad_output + grad_rows[:, None].to(grad.dtype)), None, None, None
