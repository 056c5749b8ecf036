"""Will the sweep's trials fit: the memory estimate (``vlsweep.trials.memory``) for the
smallest and the largest configuration the space allows, held against the GPU memory a
trial gets, before any trial runs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlsweep.config import RunConfig
from vlsweep.errors import UserInputError
from vlsweep.params import TrialParams
from vlsweep.spaces import CategoricalChoice, Space

# The parameters a trial's memory depends on; the others (learning rates, loss weights,
# the data mix) change no tensor's size.
RANKS = ("lora_r", "lora_r_vision", "lora_r_projector")
TARGETS = ("lora_targets_llm", "lora_targets_vision")


def _extremes(space: Space, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> list[Any]:
    """The values of ``name`` that bound memory: a range's ends, a categorical's every
    choice for layouts, or its smallest and largest number; the fixed value otherwise."""
    entry = space.searched.get(name)
    if entry is None or not space.active(name, settings, chosen):
        return [space.fixed.get(name, TrialParams.model_fields[name].default)]
    if isinstance(entry, CategoricalChoice):
        if name in TARGETS:
            return list(entry.choices)
        numbers = [c for c in entry.choices if isinstance(c, (int, float))]
        return [min(numbers), max(numbers)]
    return [entry.low, entry.high]


def corners(space: Space, settings: dict[str, Any]) -> tuple[list[TrialParams], TrialParams]:
    """(candidates for the smallest configuration, the largest one). The smallest takes
    each rank and the dropout at their lowest; which layer set (attention or MLP) is
    smaller depends on the model, so each allowed one is a candidate. The largest takes
    the highest ranks, dropout on (it saves a mask per adapted layer) and LoRA on all
    layers where the space allows it."""
    base: dict[str, Any] = {k: v for k, v in space.fixed.items() if k in TrialParams.model_fields}
    low: dict[str, Any] = dict(base)
    high: dict[str, Any] = dict(base)
    for name in (*RANKS, "lora_dropout"):
        values = _extremes(space, name, settings, base)
        low[name], high[name] = values[0], values[-1]
    layouts: list[dict[str, Any]] = [{}]
    for name in TARGETS:
        values = _extremes(space, name, settings, base)
        high[name] = "all" if "all" in values else values[0]
        smaller = [v for v in values if v != "all"] or values
        layouts = [{**layout, name: v} for layout in layouts for v in smaller]
    for name, target in space.tied.items():
        for point in (low, high, *layouts):
            if target in point:
                point[name] = point[target]
    smallest = [TrialParams.model_validate({**low, **layout}) for layout in layouts]
    return smallest, TrialParams.model_validate(high)


def _shown(params: TrialParams, space: Space) -> str:
    names = [n for n in (*RANKS, "lora_dropout", *TARGETS) if n in space.searched]
    return ", ".join(f"{n}={getattr(params, n)}" for n in names) or "the fixed values"


def gpu_memory_bytes(cfg: Any) -> tuple[float | None, str]:
    """(bytes of one GPU, where the figure came from): ``resources.gpu_memory_gb``, else
    this machine's first GPU (Ray has no per-GPU memory resource to ask)."""
    declared = cfg.resources.gpu_memory_gb
    if declared is not None:
        return declared * 2**30, "resources.gpu_memory_gb"
    import torch

    if torch.cuda.is_available():
        return float(
            torch.cuda.get_device_properties(0).total_memory
        ), f"this machine's {torch.cuda.get_device_name(0)}"
    return None, ""


def check_fit(cfg: Any, base_dir: Path, data: Any, log: Callable[[str], None]) -> None:
    """Print the estimate for the smallest and largest configuration; refuse (exit 2) a
    space whose largest configuration cannot fit the GPU memory a trial gets, and warn
    when it may not."""
    from vlsweep import demo
    from vlsweep.trials import human_bytes

    resolved = demo.resolve(cfg)
    device = "cuda" if cfg.resources.gpus_per_trial > 0 else "cpu"
    smallest, largest = corners(cfg.search_space, cfg.settings())
    estimates = _estimates(resolved, data, [*smallest, largest], device, log)
    if estimates is None:
        return
    small = min(estimates[:-1], key=lambda e: e.total)
    large = estimates[-1]
    where = (
        "per trial on its GPU" if device == "cuda" else "per trial on the CPU (resources.gpus_per_trial: 0)"
    )
    report = [
        f"memory {where}, estimated (docs/cluster.md, 'Will it fit'):",
        f"  smallest configuration ({_shown(small.params, cfg.search_space)}): {small.describe()}",
        f"  largest configuration ({_shown(large.params, cfg.search_space)}): {large.describe()}",
    ]
    gpu, source = gpu_memory_bytes(cfg) if device == "cuda" else (None, "")
    if gpu is not None:
        share = min(cfg.resources.gpus_per_trial, 1.0)
        budget = gpu * share
        tensors = large.total - large.parts["cuda_context"] - large.parts["allocator_slack"]
        got = (
            f"the {human_bytes(budget)} a trial gets ({source} {human_bytes(gpu)} x gpus_per_trial {share:g})"
        )
        if tensors > budget:
            raise UserInputError(
                [
                    f"resources.gpu_memory_gb: the largest configuration the space allows needs about "
                    f"{human_bytes(tensors)} of tensors alone, more than {got}; "
                    + _remedies(resolved, cfg.search_space, share),
                    f"the estimate of the largest configuration ({_shown(large.params, cfg.search_space)}): "
                    + large.describe(),
                ]
            )
        if large.total > budget:
            report.append(
                f"warning: the largest configuration may not fit: {human_bytes(large.total)} with the CUDA "
                f"context and allocator slack, against {got}; " + _remedies(resolved, cfg.search_space, share)
            )
    elif device == "cuda":
        report.append(
            "  note: set resources.gpu_memory_gb (GiB per GPU) to have the sweep check this against "
            "the memory a trial gets"
        )
    for line in report:
        log(line)


def _remedies(cfg: RunConfig, space: Space, share: float) -> str:
    fixes = []
    if any(n in space.searched for n in RANKS):
        fixes.append("lower the top of the lora_r range (space.lora_r)")
    fixes.append(f"lower budget.batch_size (now {cfg.budget.batch_size})")
    if not cfg.model.gradient_checkpointing:
        fixes.append("set model.gradient_checkpointing: true")
    if cfg.model.quantization is None:
        fixes.append("quantize the base (model.quantization: {bits: 4})")
    elif cfg.model.quantization.bits == 8:
        fixes.append("quantize the base to 4 bits (model.quantization: {bits: 4})")
    if share < 1:
        fixes.append("or give each trial a larger share of a GPU (resources.gpus_per_trial, up to 1)")
    else:
        fixes.append("or run on GPUs with more memory (resources.gpu_memory_gb)")
    return ", ".join(fixes)


def _estimates(
    cfg: RunConfig, data: Any, points: list[TrialParams], device: str, log: Callable[[str], None]
) -> list[Any] | None:
    from transformers import AutoConfig

    from vlsweep.trials import data_shape, estimate, load_processing, module_groups, resolve_source

    try:
        hf_config = AutoConfig.from_pretrained(
            resolve_source(cfg.model),
            trust_remote_code=cfg.model.trust_remote_code,
            revision=cfg.model.revision,
        )
        processing = load_processing(cfg.model)
    except (OSError, UserInputError) as exc:
        log(f"note: no memory estimate: the model's config and processor cannot be read here ({exc})")
        return None
    if sys.stderr.isatty():  # a progress line for the person waiting; logs get the result
        log("estimating each trial's memory (the model without weights; its vision tower on the CPU)...")
    shape = data_shape(cfg, data.train, processing)
    groups = module_groups(cfg.model, hf_config.model_type)
    return [
        estimate(cfg, p, shape, hf_config, groups, device=device, n_tasks=len(data.tasks)) for p in points
    ]
