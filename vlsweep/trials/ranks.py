"""Where one process stands among a trial's train workers, and what they must agree on.

A trial on N train workers (``resources.train_workers``) is data-parallel: every rank
holds the whole model, draws the same global batch (the mixer is seeded alike) and
trains on its own share of it. torch's ``DistributedDataParallel`` sums the ranks'
gradients; what is ours is the loss each rank backpropagates, so that the update is the
one a single worker would make from the whole batch:

- each task's mean is over the *global* batch's answer tokens: a rank's token-loss sums
  divided by the token counts summed over the ranks (one ``all_reduce`` of two small
  vectors per step), so a batch that does not split evenly needs no accumulation and no
  rank's tokens weigh more than another's;
- the value every rank sees is that global mean, and its gradient is this rank's part of
  it times N, which DDP's average brings back to the global mean's gradient. A balance
  that is any differentiable function of the task means (static weights, uncertainty,
  FAMO) therefore makes the same update on every rank as on one worker, and its own
  state (FAMO's weights, uncertainty's log-variances) stays identical across ranks;
- a Jacobian balance (PCGrad, UPGrad) combines the task gradients non-linearly, so the
  ranks average each task's gradient (torchjd's ``.jac`` fields) before the aggregator
  combines them, and DDP's own reduction is skipped for that step: the combination is
  of the global task gradients, as on one worker.

With ``fsdp`` the same losses flow through torch's ``fully_shard`` instead of DDP: its
reduce-scatter averages the gradients over the ranks as DDP's all-reduce does, so the
update is again the one-worker one (a Jacobian balance is refused there: it needs each
task's whole gradient, which FSDP keeps sharded).

This module imports torch.distributed only; Ray Train starts the process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Ranks:
    """This process's rank, the number of train workers (1: no process group), and how
    they split the work: ``ddp`` (each holds the model) or ``fsdp`` (each holds 1/N of
    every parameter, all-gathered a layer at a time)."""

    rank: int = 0
    world: int = 1
    strategy: str = "ddp"

    @classmethod
    def current(cls, strategy: str = "ddp") -> Ranks:
        """The process group Ray Train started, or a single rank when there is none."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), strategy)
        return cls()

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the ranks (FSDP): every rank must then run
        every forward pass, evaluations included."""
        return self.world > 1 and self.strategy == "fsdp"

    @property
    def main(self) -> bool:
        """The rank that evaluates, writes the trial's files and reports metrics."""
        return self.rank == 0

    def share(self, indices: Sequence[int]) -> list[int]:
        """This rank's contiguous share of the global batch's indices (shares differ by at
        most one sample)."""
        q, r = divmod(len(indices), self.world)
        start = self.rank * q + min(self.rank, r)
        return list(indices[start : start + q + (1 if self.rank < r else 0)])

    def global_means(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task means over the global batch from this rank's token-loss ``sums`` and
        token ``counts``: (means whose value is global and whose gradient is this rank's
        part times the world size, global counts)."""
        if self.world == 1:
            return sums / counts.clamp(min=1), counts
        import torch.distributed as dist

        both = torch.stack([sums.detach(), counts])
        dist.all_reduce(both)
        total_counts = both[1].clamp(min=1)
        local = self.world * sums / total_counts
        return both[0] / total_counts + (local - local.detach()), both[1]

    def average_jacobians(self, params: Sequence[torch.Tensor]) -> None:
        """Average torchjd's per-task gradients (``.jac``) over the ranks, in place."""
        self._average([j for p in params if (j := getattr(p, "jac", None)) is not None])

    def average_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Average ``.grad`` over the ranks, in place: for a step whose backward bypassed
        DDP (a Jacobian balance's batch with one task in it)."""
        self._average([p.grad for p in params if p.grad is not None])

    def _average(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` over the ranks in place, in one collective per dtype and
        device (one per parameter would be hundreds a step)."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        groups: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = {}
        for t in tensors:  # in chunks of ~64 MiB: the flat copy adds that much at most
            chunks = groups.setdefault((t.dtype, t.device), [[]])
            if chunks[-1] and sum(x.numel() * x.element_size() for x in chunks[-1]) >= _CHUNK_BYTES:
                chunks.append([])
            chunks[-1].append(t)
        for chunks in groups.values():
            for same in chunks:
                flat = torch.cat([t.reshape(-1) for t in same])
                dist.all_reduce(flat)  # a sum: gloo has no average
                flat.div_(self.world)
                offset = 0
                for t in same:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()

    @contextlib.contextmanager
    def same_randomness(self, key: int) -> Iterator[None]:
        """A context in which every rank draws the same random numbers (seeded by ``key``):
        for a computation that must come out alike on every rank, such as PCGrad's random
        order of the tasks, when the ranks' own generators have drawn differently (dropout
        on shares of different sizes). On one rank, the process's own generator as is."""
        if self.world == 1:
            yield
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(key)
            yield

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out
