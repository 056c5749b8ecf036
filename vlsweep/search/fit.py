"""Will the sweep's trials fit: the memory estimate (``vlsweep.trials.memory``) for the
smallest and the largest configuration the space allows, held against the GPU memory a
trial gets, before any trial runs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from vlsweep.config import RunConfig
from vlsweep.errors import QUANTIZE_HINT, UserInputError
from vlsweep.params import TrialParams
from vlsweep.search.config import SweepConfig
from vlsweep.spaces import CategoricalChoice, Space

# The parameters a trial's memory depends on; the others (learning rates, loss weights,
# the data mix) change no tensor's size.
RANKS = ("lora_r", "lora_r_vision", "lora_r_projector")
TARGETS = ("lora_targets_llm", "lora_targets_vision")


def _extremes(space: Space, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> list[Any]:
    """The values of ``name`` that bound memory: a range's ends, a categorical's every
    choice for layouts and balances, or its smallest and largest number; the fixed value
    otherwise."""
    entry = space.searched.get(name)
    if entry is None or not space.active(name, settings, chosen):
        return [space.fixed.get(name, TrialParams.model_fields[name].default)]
    if isinstance(entry, CategoricalChoice):
        if name in (*TARGETS, "loss_balance", *RANKS[1:]):  # a layout rank's 0 is lora_r
            return list(entry.choices)
        numbers = [c for c in entry.choices if isinstance(c, (int, float))]
        return [min(numbers), max(numbers)]
    if name in RANKS[1:] and entry.low == 0:  # 0 (as lora_r), then the ranks from 1
        return [0, 1, entry.high]
    return [entry.low, entry.high]


def _layout_rank(values: list[Any], lora_r: int, largest: bool) -> Any:
    """A vision or projector rank's extreme, where 0 means "as lora_r" (lora.plan_lora)."""
    effective = [lora_r if v == 0 else v for v in values]
    pick = max if largest else min
    return pick(zip(effective, values, strict=True))[1]


# Loss balances by the memory they add: one gradient per task (pcgrad, upgrad) is the most.
_BALANCE_COST = {"pcgrad": 2, "upgrad": 2, "uncertainty": 1, "famo": 1}


def corners(space: Space, settings: dict[str, Any]) -> tuple[list[TrialParams], list[TrialParams]]:
    """(candidates for the smallest configuration, candidates for the largest). The
    smallest takes each rank and the dropout at their lowest, the largest at their
    highest (dropout on saves a mask per adapted layer), a vision or projector rank of 0
    counting as ``lora_r``; the largest takes the loss balance that holds the most (one
    gradient per task). Which layer set (attention or MLP) is smaller or larger depends on
    the model, so each allowed one is a candidate, except that LoRA on all layers is the
    largest where the space allows it."""
    base: dict[str, Any] = {k: v for k, v in space.fixed.items() if k in TrialParams.model_fields}
    low: dict[str, Any] = dict(base)
    high: dict[str, Any] = dict(base)
    for name in ("lora_r", "lora_dropout"):
        values = _extremes(space, name, settings, base)
        low[name], high[name] = values[0], values[-1]
    for name in RANKS[1:]:
        values = _extremes(space, name, settings, base)
        low[name] = _layout_rank(values, low["lora_r"], largest=False)
        high[name] = _layout_rank(values, high["lora_r"], largest=True)
    balances = _extremes(space, "loss_balance", settings, base)
    high["loss_balance"] = max(balances, key=lambda b: _BALANCE_COST.get(b, 0))
    small_layouts: list[dict[str, Any]] = [{}]
    large_layouts: list[dict[str, Any]] = [{}]
    for name in TARGETS:
        values = _extremes(space, name, settings, base)
        smaller = [v for v in values if v != "all"] or values
        larger = ["all"] if "all" in values else values
        small_layouts = [{**layout, name: v} for layout in small_layouts for v in smaller]
        large_layouts = [{**layout, name: v} for layout in large_layouts for v in larger]
    for name, target in space.tied.items():
        for point in (low, high, *small_layouts, *large_layouts):
            if target in point:
                point[name] = point[target]
    smallest = [TrialParams.model_validate({**low, **layout}) for layout in small_layouts]
    largest = [TrialParams.model_validate({**high, **layout}) for layout in large_layouts]
    return smallest, largest


def _shown(params: TrialParams | None, space: Space) -> str:
    names = [n for n in (*RANKS, "lora_dropout", *TARGETS, "loss_balance") if n in space.searched]
    return ", ".join(f"{n}={getattr(params, n)}" for n in names) or "the fixed values"


def gpu_memory_bytes(cfg: SweepConfig) -> tuple[float | None, str]:
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


def check_fit(cfg: SweepConfig, data: Any, log: Callable[[str], None]) -> None:
    """Print the estimate for the smallest and largest configuration; refuse (exit 2) a
    space whose largest configuration cannot fit the declared GPU memory a trial gets, and
    warn when it may not (or when only this machine's GPU, which may not be the
    cluster's, says it cannot)."""
    from vlsweep import demo
    from vlsweep.trials import human_bytes

    resolved = demo.resolve(cfg)
    device = "cuda" if cfg.resources.gpus_per_trial > 0 else "cpu"
    smallest, largest = corners(cfg.search_space, cfg.settings())
    estimates = _estimates(resolved, data, [*smallest, *largest], device, log)
    if estimates is None:
        return
    small = min(estimates[: len(smallest)], key=lambda e: e.total)
    large = max(estimates[len(smallest) :], key=lambda e: e.total)
    where = (
        "per trial on its GPU" if device == "cuda" else "per trial on the CPU (resources.gpus_per_trial: 0)"
    )
    dtype = str(large.dtype).removeprefix("torch.")
    import torch

    auto = device == "cuda" and cfg.model.dtype == "auto" and not torch.cuda.is_available()
    assumed = " (model.dtype auto, taken as a GPU with bfloat16)" if auto else ""
    report = [f"memory {where} in {dtype}{assumed}, estimated (docs/cluster.md, 'Will it fit'):"]
    for label, e in (("smallest", small), ("largest", large)):
        first, *rest = e.lines()
        report.append(f"  {label} configuration ({_shown(e.params, cfg.search_space)}): {first}")
        report += [f"    {line}" for line in rest]
    gpu, source = gpu_memory_bytes(cfg) if device == "cuda" else (None, "")
    if gpu is not None:
        share = cfg.resources.gpus_per_trial
        budget = gpu * share
        got = (
            f"the {human_bytes(budget)} a trial gets ({source} {human_bytes(gpu)} x gpus_per_trial {share:g})"
        )
        fixes = _remedies(resolved, cfg.search_space, share, large)
        if large.tensors > budget:
            problem = (
                f"the largest configuration the space allows needs about {human_bytes(large.tensors)} of "
                f"tensors alone, more than {got}; {fixes}"
            )
            if source == "resources.gpu_memory_gb":
                shown = _shown(large.params, cfg.search_space)
                raise UserInputError(
                    [
                        f"resources.gpu_memory_gb: {problem}",
                        f"the estimate of the largest configuration ({shown}): " + "; ".join(large.lines()),
                    ]
                )
            # This machine's GPU may not be the cluster's: said, not refused.
            report.append(
                f"warning: {problem}; set resources.gpu_memory_gb to the cluster's GPUs to have it checked"
            )
        elif large.total > budget:
            report.append(
                f"warning: the largest configuration may not fit: {human_bytes(large.total)} with the CUDA "
                f"context and allocator slack, against {got}; {fixes}"
            )
    elif device == "cuda":
        report.append(
            "  note: set resources.gpu_memory_gb (GiB per GPU) to have the sweep check this against "
            "the memory a trial gets"
        )
    for line in report:
        log(line)


def _remedies(cfg: RunConfig, space: Space, share: float, large: Any) -> str:
    fixes = []
    if sum(large.evaluation.values()) > large.training:
        fixes.append(
            f"lower budget.eval_batch_size (now {cfg.budget.eval_batch_size}: evaluation is the peak)"
        )
    if any(n in space.searched for n in RANKS):
        fixes.append("lower the top of the lora_r range (space.lora_r)")
    fixes.append(f"lower budget.batch_size (now {cfg.budget.batch_size})")
    if not cfg.model.gradient_checkpointing:
        fixes.append("set model.gradient_checkpointing: true")
    if cfg.model.quantization is None:
        fixes.append(QUANTIZE_HINT)
    elif cfg.model.quantization.bits == 8:
        fixes.append("quantize the base to 4 bits (model.quantization: {bits: 4})")
    if share < 1:
        fixes.append("or give each trial a larger share of a GPU (resources.gpus_per_trial, up to 1)")
    else:
        fixes.append("or run on GPUs with more memory")
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
    try:
        # The longest sample and largest image of either split: evaluations run on val.
        shape = data_shape(cfg, [*data.train, *data.val], processing)
        groups = module_groups(cfg.model, hf_config.model_type)
        return [
            estimate(cfg, p, shape, hf_config, groups, device=device, n_tasks=len(data.tasks)) for p in points
        ]
    except Exception as exc:  # noqa: BLE001 - an estimate that cannot be made must not block a sweep
        first = (str(exc).splitlines() or [""])[0]
        log(
            f"note: no memory estimate for this model ({type(exc).__name__}: {first}); the sweep runs "
            "without it (please report it)"
        )
        return None
