"""Optimizer parameter groups: one learning rate per module group, built by a pure function.

Every trainable parameter lands in exactly one AdamW group (checked, as nanochat's
``setup_optimizer`` does). Within a module group, parameters split by weight decay
(none on norms and biases) and, with LoRA+, by lora_A vs lora_B.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or name.endswith(".bias") or "norm" in lowered


def _is_lora_b(name: str) -> bool:
    return ".lora_B." in name or ".lora_embedding_B." in name


def build_param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    group_of: dict[str, str],
    lrs: dict[str, float],
    *,
    weight_decay: float = 0.0,
    loraplus_lr_ratio: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW param groups for the trainable parameters.

    ``group_of`` maps each trainable parameter name to its module group and ``lrs`` each
    module group to its learning rate. Each returned group carries ``module_group`` and
    ``base_lr`` so that schedules and logs can name it.
    """
    buckets: dict[tuple[str, bool, bool], list[tuple[str, torch.nn.Parameter]]] = {}
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    missing = [n for n, _ in trainable if n not in group_of]
    if missing:
        raise ValueError(f"trainable parameters without a module group: {missing[:10]}")
    for name, param in trainable:
        key = (group_of[name], _no_decay(name, param), bool(loraplus_lr_ratio) and _is_lora_b(name))
        buckets.setdefault(key, []).append((name, param))
    groups: list[dict[str, Any]] = []
    for (module_group, no_decay, lora_b), items in sorted(buckets.items()):
        lr = lrs[module_group] * (loraplus_lr_ratio if lora_b else 1.0)  # type: ignore[operator]
        label = module_group + (".no_decay" if no_decay else "") + (".lora_B" if lora_b else "")
        groups.append(
            {
                "params": [p for _, p in items],
                "param_names": [n for n, _ in items],
                "lr": lr,
                "base_lr": lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "module_group": module_group,
                "name": label,
            }
        )
    grouped = sum(len(g["params"]) for g in groups)
    unique = len({id(p) for g in groups for p in g["params"]})
    if grouped != len(trainable) or unique != len(trainable):
        raise AssertionError(f"{len(trainable)} trainable parameters but {grouped} grouped ({unique} unique)")
    return groups


def make_optimizer(
    groups: list[dict[str, Any]], *, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    # param_names is our bookkeeping; AdamW keeps unknown group keys untouched.
    fused = all(p.is_cuda for g in groups for p in g["params"]) and bool(groups)
    return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=fused or None)


def group_grad_norms(groups: list[dict[str, Any]]) -> tuple[dict[str, float], torch.Tensor]:
    """L2 norm of the gradient per module group, and the total norm (one tensor, no sync)."""
    per_group: dict[str, list[torch.Tensor]] = {}
    for g in groups:
        grads = [p.grad for p in g["params"] if p.grad is not None]
        if grads:
            per_group.setdefault(g["module_group"], []).extend(grads)
    norms = {k: _whole(torch.nn.utils.get_total_norm(v)) for k, v in per_group.items()}
    if not norms:
        return {}, torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(list(norms.values())))
    return norms, total  # type: ignore[return-value]


def _whole(norm: torch.Tensor) -> torch.Tensor:
    """A norm of sharded gradients (FSDP's DTensors: each rank's part) as the whole one."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm
