"""Training on N processes: the process group a run joins under PyTorch's launcher, and the few collectives the
recipe needs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tunelab.jobs.runner JOB_ID

`torchrun` starts N copies of the trainer and tells each its RANK, LOCAL_RANK and WORLD_SIZE. Every rank loads
the whole data set and the same model, takes its share of each global batch (`batch[rank::world]`), and the
gradients of the trainable parameters are summed across ranks before clipping and the optimizer step, so N
processes compute the update one process computes on the same global batch. The recipe's lean forward calls the
model's modules directly, never `model.forward`, so DistributedDataParallel's hooks would not sync anything:
the gradients are all-reduced here explicitly, in one flattened bucket per step. Rank 0 alone writes files and
talks to the job's database; a stop seen by any rank is agreed on by all (an all-reduce MAX) at each step's end.

A process with no WORLD_SIZE (or WORLD_SIZE 1) never imports torch.distributed: `join()` returns None and the
recipe runs exactly as a 1-process run always has. Backend: gloo on CPU, NCCL on CUDA (device cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .launch import GroupLost, die_with_parent, world_size


@dataclass
class Group:
    """This process's place in the run: its rank among `world` processes, and the device it computes on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    lost: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: list) -> list:
        """This rank's part of a global batch: every world-th sample, from its rank on (possibly none)."""
        return batch[self.rank::self.world]

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `parameters` over all ranks, in one flattened all-reduce; a rank whose share of
        the batch was empty contributes zeros."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._all_reduce(flat, "sum")
        offset = 0
        for p in parameters:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (losses, token counts), in float64."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._all_reduce(tensor, "sum")
        return tensor.tolist()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag true when it is true on any rank (an all-reduce MAX): every rank decides alike."""
        tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self.device)
        self._all_reduce(tensor, "max")
        return [bool(v) for v in tensor.tolist()]

    def broadcast_parameters(self, parameters: list[torch.nn.Parameter]) -> None:
        """Make every rank start from rank 0's values (as DistributedDataParallel does when it wraps a model)."""
        import torch.distributed as dist

        flat = torch.cat([p.detach().reshape(-1) for p in parameters])
        try:
            dist.broadcast(flat, src=0)
        except (RuntimeError, dist.DistError) as exc:
            raise self._lost(exc) from exc
        offset = 0
        with torch.no_grad():
            for p in parameters:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def barrier(self) -> None:
        import torch.distributed as dist

        try:
            dist.barrier()
        except (RuntimeError, dist.DistError) as exc:
            raise self._lost(exc) from exc

    def leave(self) -> None:
        """Tear the group down after a run; not after a lost peer, where it could wait on the dead rank."""
        import torch.distributed as dist

        if dist.is_initialized() and not self.lost:
            dist.destroy_process_group()

    def _lost(self, exc: Exception) -> GroupLost:
        self.lost = True
        return GroupLost(str(exc))

    def _all_reduce(self, tensor: torch.Tensor, op: str) -> None:
        import torch.distributed as dist

        try:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        except (RuntimeError, dist.DistError) as exc:  # a peer died: the socket closed under the collective
            raise self._lost(exc) from exc


def join() -> Group | None:
    """Join the run's process group when torchrun started N > 1 processes; None otherwise (nothing imported).
    Each rank dies with its parent (torchrun), so a killed launcher leaves no rank behind."""
    world = world_size()
    if world <= 1:
        return None
    die_with_parent()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # A rank waiting on a peer that vanished without closing its sockets gives up after this; checkpoints of
    # large models are written by rank 0 while the others wait at a barrier, so it is generous.
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device)


class Quiet:
    """The reporter of every rank but 0: rank 0 alone writes events and draws progress."""

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None: ...
    def step(self, metrics) -> None: ...
    def message(self, text: str) -> None: ...
    def checkpoint(self, step: int, path, metrics: dict) -> None: ...
    def finish(self) -> None: ...
