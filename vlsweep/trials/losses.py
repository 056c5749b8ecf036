"""How the tasks' losses make one update: a table of balancing strategies, picked by the
trial's ``loss_balance`` parameter.

Every strategy starts from the same per-task losses (``task_losses``: token cross-entropy
on the answer tokens, averaged within each task) and leaves the gradient of the update in
``.grad``, as ``loss.backward()`` would:

- ``static``: the tasks' mean losses weighted by the trial's ``weight_ocr``.
- ``uncertainty``: Kendall et al. (2018), a learned log-variance per task (torchjd's
  ``UW``); the log-variances are trainable parameters in an optimizer group of their own.
- ``famo``: FAMO (Liu et al. 2023, torchjd's ``FAMO``), task weights stepped after each
  update from how much each loss fell, with one forward pass more per step.
- ``pcgrad`` / ``upgrad``: one gradient per task (torchjd's Jacobian descent), combined
  by PCGrad (Yu et al. 2020) or UPGrad (Quinton & Rey 2024) so that no task's gradient
  undoes another's; one backward pass per task.

The balancing methods come from torchjd, a maintained library of exactly these, rather
than our own code. What is ours is the handling of a task absent from a batch (its mean
is 0, which each method would read as a solved task) and the bookkeeping the engine
needs (parameters, the weights each step used).

A new strategy is a ``Balance`` subclass here, its name in ``BALANCES`` and in
``vlsweep.params.LOSS_BALANCES``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlsweep.config import LossConfig
from vlsweep.trials.batching import IGNORE
from vlsweep.trials.ranks import Ranks


def task_losses(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy on answer tokens, averaged per task: (means, token counts).

    A task with no tokens in the batch has mean 0 and contributes nothing.
    """
    sums, counts = task_sums(logits, labels, task_ids, n_tasks)
    return sums / counts.clamp(min=1), counts


def task_sums(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy on answer tokens, summed per task: (sums, token counts); what
    the ranks of a multi-worker trial add up before dividing (``Ranks.global_means``)."""
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    rows = mask.nonzero(as_tuple=True)[0]
    ce = F.cross_entropy(shift_logits[mask].float(), shift_labels[mask], reduction="none")
    token_task = task_ids[rows]
    sums = torch.zeros(n_tasks, device=ce.device).index_add_(0, token_task, ce)
    counts = torch.zeros(n_tasks, device=ce.device).index_add_(0, token_task, torch.ones_like(ce))
    return sums, counts


def weighted_sum(means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The tasks' mean losses weighted by the trial's task weights (``weight_ocr``)."""
    return (weights * means).sum()


class Balance:
    """One trial's balancing state. ``backward`` leaves the update's gradient in the
    inputs' ``.grad`` and returns the loss to log; ``after_step`` sees the same batch's
    losses again after the optimizer step (only FAMO asks for them)."""

    # Whether after_step needs the batch's losses recomputed after the step.
    needs_losses_after_step = False
    # Whether multiplying every task loss by one factor multiplies the model's gradient by
    # it and changes nothing else: what a float16 loss scaler needs.
    scale_equivariant = True
    # Whether the update is a non-linear combination of the task gradients, which the
    # ranks of a multi-worker trial must then average task by task (vlsweep.trials.ranks).
    combines_task_gradients = False
    # This process among the trial's train workers, and the trial's seed (the engine sets them).
    ranks: Ranks = Ranks()
    seed: int = 0

    def __init__(self, n_tasks: int, static_weights: torch.Tensor):
        self.n_tasks = n_tasks
        self.static_weights = static_weights
        # The task weights the last step used (for the training log).
        self.last_weights = static_weights.detach().clone()

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Parameters the trial's optimizer learns, in the optimizer group ``balance``."""
        return []

    def owned(self) -> list[torch.nn.Parameter]:
        """Parameters the strategy steps itself, never the trial's optimizer."""
        return []

    def backward(
        self, means: torch.Tensor, counts: torch.Tensor, inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, means: torch.Tensor, counts: torch.Tensor) -> None:
        return None

    def to(self, device: Any) -> Balance:
        return self

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the balance between steps (vlsweep.trials.checkpoints)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


class Static(Balance):
    def backward(
        self, means: torch.Tensor, counts: torch.Tensor, inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        loss = weighted_sum(means, self.static_weights)
        loss.backward()
        return loss.detach()


class Uncertainty(Balance):
    """Kendall et al.: sum_i 0.5 exp(-s_i) L_i + 0.5 s_i, with s_i learned."""

    scale_equivariant = False  # a scaled L_i moves the learned s_i

    def __init__(self, n_tasks: int, static_weights: torch.Tensor):
        from torchjd.scalarization import UW

        super().__init__(n_tasks, static_weights)
        self.uw = UW(n_tasks)

    def to(self, device: Any) -> Balance:
        self.uw.to(device)
        return self

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [("balance.log_var", self.uw.log_var)]

    def state(self) -> dict[str, Any]:
        # (Its optimizer state is the trial optimizer's, checkpointed with it.)
        return {"log_var": self.uw.log_var.detach().cpu().clone()}

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.uw.log_var.copy_(state["log_var"])

    def backward(
        self, means: torch.Tensor, counts: torch.Tensor, inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        absent = (counts == 0).to(means.dtype)
        # An absent task's mean is 0 and its 0.5 s_i term alone would lower s_i (raise its
        # weight) for nothing: that term is taken out.
        loss = self.uw(means) - 0.5 * (absent * self.uw.log_var).sum()
        loss.backward()
        self.last_weights = 0.5 * torch.exp(-self.uw.log_var.detach())
        return loss.detach()


class Famo(Balance):
    """FAMO: a log-loss combination weighted by softmax(w); w is stepped after each update
    from the change of each loss on the same batch."""

    needs_losses_after_step = True
    scale_equivariant = False  # log(k L_i) has the gradient of log(L_i): the scale is lost

    def __init__(self, n_tasks: int, static_weights: torch.Tensor, lr: float = 0.025):
        from torchjd.scalarization import FAMO

        super().__init__(n_tasks, static_weights)
        self.famo = FAMO(n_tasks, lr=lr)
        # The last loss seen per task (nan: none yet) stands in for a task absent from a
        # batch, so that it gets no gradient (its log of 0 would otherwise swamp FAMO's
        # normaliser and zero the whole update); that step updates no weight (softmax
        # couples the logits: an absent task's would move with the present one's change).
        self.seen = torch.full((n_tasks,), float("nan"))

    def to(self, device: Any) -> Balance:
        self.famo.to(device)
        self.seen = self.seen.to(device)
        return self

    def owned(self) -> list[torch.nn.Parameter]:
        return list(self.famo.parameters())

    def state(self) -> dict[str, Any]:
        # FAMO keeps its logits, its own Adam and the losses before the step inside it:
        # the whole object is kept (torchjd gives no state_dict for it).
        return {"famo": copy.deepcopy(self.famo), "seen": self.seen.detach().cpu().clone()}

    def load_state(self, state: dict[str, Any]) -> None:
        device = self.seen.device
        self.famo = state["famo"]
        self.famo.to(device)
        # .to() moves the logits, not what FAMO holds beside them: its Adam's moments and
        # the losses before the step (loaded on the CPU).
        for value in vars(self.famo).values():
            if isinstance(value, torch.optim.Optimizer):
                for slot in value.state.values():
                    for key, tensor in slot.items():
                        if isinstance(tensor, torch.Tensor) and key != "step":
                            slot[key] = tensor.to(device)
        for name, value in list(vars(self.famo).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                setattr(self.famo, name, value.to(device))
        self.seen = state["seen"].to(device)

    def _filled(self, means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        # A task never seen yet stands in as the present tasks' mean loss.
        seen = torch.where(self.seen.isnan(), means.detach()[counts > 0].mean(), self.seen)
        return torch.where(counts > 0, means, seen)

    def backward(
        self, means: torch.Tensor, counts: torch.Tensor, inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        self.seen = torch.where(counts > 0, means.detach(), self.seen)
        loss = self.famo(self._filled(means, counts))
        loss.backward()
        self.last_weights = torch.softmax(self.famo._w.detach(), dim=0)
        return weighted_sum(means.detach(), self.last_weights)

    def after_step(self, means: torch.Tensor, counts: torch.Tensor) -> None:
        if bool((counts > 0).all()):
            self.famo.update(means.detach())


class Jacobian(Balance):
    """One gradient per task present in the batch, combined by a torchjd aggregator. On
    several ranks each task's gradient is averaged over them before it is combined."""

    combines_task_gradients = True

    def __init__(self, n_tasks: int, static_weights: torch.Tensor, aggregator: Any):
        super().__init__(n_tasks, static_weights)
        self.aggregator = aggregator
        self._steps = 0  # combinations made: the ranks' shared seed for each

    def state(self) -> dict[str, Any]:
        return {"steps": self._steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])

    def backward(
        self, means: torch.Tensor, counts: torch.Tensor, inputs: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        from torchjd.autojac import backward, jac_to_grad

        present = [i for i in range(self.n_tasks) if counts[i] > 0]
        weights = torch.zeros(self.n_tasks, device=means.device)
        params = [p for p in inputs if p.requires_grad]
        if len(present) < 2:  # one task in the batch: its own gradient, nothing to balance
            means[present].sum().backward()
            self.ranks.average_grads(params)
            weights[present] = 1.0
        else:
            # parallel_chunk_size=1: one backward per task, without torch.vmap, which some
            # models' ops do not support.
            backward([means[i] for i in present], inputs=params, parallel_chunk_size=1)
            self.ranks.average_jacobians(params)
            self._steps += 1
            # The ranks combine alike (PCGrad draws a random order of the tasks), from the
            # trial's seed and the step.
            with self.ranks.same_randomness(self.seed * 1_000_003 + self._steps):
                got = jac_to_grad(params, self.aggregator)
            if got is not None:
                weights[present] = got.detach().to(weights.device, weights.dtype)
        self.last_weights = weights
        return weighted_sum(means.detach(), weights)


def _famo(n: int, w: torch.Tensor, cfg: LossConfig) -> Balance:
    return Famo(n, w, lr=cfg.famo_lr)


def _pcgrad(n: int, w: torch.Tensor, cfg: LossConfig) -> Balance:
    from torchjd.aggregation import PCGrad

    return Jacobian(n, w, PCGrad())


def _upgrad(n: int, w: torch.Tensor, cfg: LossConfig) -> Balance:
    from torchjd.aggregation import UPGrad

    return Jacobian(n, w, UPGrad())


# loss_balance -> (number of tasks, static task weights, loss settings) -> the trial's Balance.
BALANCES: dict[str, Callable[[int, torch.Tensor, LossConfig], Balance]] = {
    "static": lambda n, w, cfg: Static(n, w),
    "uncertainty": lambda n, w, cfg: Uncertainty(n, w),
    "famo": _famo,
    "pcgrad": _pcgrad,
    "upgrad": _upgrad,
}
