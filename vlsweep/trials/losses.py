"""How the tasks' losses make one training loss: a table of strategies, picked by the
config's ``loss.strategy``.

Every strategy starts from the same per-task losses (``task_losses``: token cross-entropy
on the answer tokens, averaged within each task) and returns the scalar the optimizer
steps on. A new strategy is a function here, an entry in ``LOSSES`` and its name in
``vlsweep.config.LOSS_STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlsweep.trials.batching import IGNORE

# (per-task mean losses, per-task weights from the trial's parameters) -> training loss.
LossStrategy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_losses(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy on answer tokens, averaged per task: (means, token counts).

    A task with no tokens in the batch has mean 0 and contributes nothing.
    """
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    rows = mask.nonzero(as_tuple=True)[0]
    ce = F.cross_entropy(shift_logits[mask].float(), shift_labels[mask], reduction="none")
    token_task = task_ids[rows]
    sums = torch.zeros(n_tasks, device=ce.device).index_add_(0, token_task, ce)
    counts = torch.zeros(n_tasks, device=ce.device).index_add_(0, token_task, torch.ones_like(ce))
    return sums / counts.clamp(min=1), counts


def weighted_sum(means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The tasks' mean losses weighted by the trial's task weights (``weight_ocr``)."""
    return (weights * means).sum()


LOSSES: dict[str, LossStrategy] = {"weighted_sum": weighted_sum}
