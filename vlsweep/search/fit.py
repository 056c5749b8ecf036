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
from vlsweep.spaces import CategoricalChoice, IntRange, Space

# The parameters a trial's memory depends on; the others (learning rates, loss weights,
# the data mix) change no tensor's size.
RANKS = ("lora_r", "lora_r_vision", "lora_r_projector")
TARGETS = ("lora_targets_llm", "lora_targets_vision")


def _maybe_active(space: Space, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> bool | None:
    """Whether ``name`` is sampled: decided by the settings and fixed values, or None when
    its condition names a parameter that is itself searched (it may be, or not)."""
    entry = space.searched.get(name)
    if entry is None:
        return False
    if any(key in space.searched and key not in chosen for key in entry.when or {}):
        return None
    return space.active(name, settings, chosen)


def _extremes(space: Space, name: str, settings: dict[str, Any], chosen: dict[str, Any]) -> list[Any]:
    """The values of ``name`` that bound memory: a range's ends, a categorical's every
    choice for layouts, balances and layout ranks, or its smallest and largest number; the
    fixed value (or default) when it is not searched, and besides the others when it may
    not be (a condition on another searched parameter)."""
    entry = space.searched.get(name)
    default = [space.fixed.get(name, TrialParams.model_fields[name].default)]
    active = _maybe_active(space, name, settings, chosen)
    if entry is None or active is False:
        return default
    values: list[Any]
    if isinstance(entry, CategoricalChoice):
        if name in (*TARGETS, "loss_balance", *RANKS[1:]):  # a layout rank's 0 is lora_r
            values = list(entry.choices)
        else:
            numbers = [c for c in entry.choices if isinstance(c, (int, float))]
            values = [min(numbers), max(numbers)]
    else:
        step = getattr(entry, "step", None) or 1
        high = (
            entry.low + (entry.high - entry.low) // step * step if isinstance(entry, IntRange) else entry.high
        )
        # A layout rank from 0: 0 (as lora_r), then the ranks from the first step on.
        layout_from_0 = name in RANKS[1:] and entry.low == 0
        values = [0, step, high] if layout_from_0 else [entry.low, high]
    return values if active else [*values, *(d for d in default if d not in values)]


def _ends(values: list[Any]) -> tuple[Any, Any]:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (min(numbers), max(numbers)) if numbers else (values[0], values[-1])


def _layout_rank(values: list[Any], lora_r: int, largest: bool) -> Any:
    """A vision or projector rank's extreme, where 0 means "as lora_r" (lora.plan_lora)."""
    effective = [lora_r if v == 0 else v for v in values]
    pick = max if largest else min
    return pick(zip(effective, values, strict=True))[1]


# Loss balances by the memory they add: one gradient per task (pcgrad, upgrad) is the most.
_BALANCE_COST = {"pcgrad": 2, "upgrad": 2, "uncertainty": 1, "famo": 1}


def _source(space: Space, name: str) -> str:
    """The parameter whose values ``name`` takes: its tie's target, or itself."""
    return space.tied.get(name, name)


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
        low[name], high[name] = _ends(_extremes(space, _source(space, name), settings, base))
    for name in RANKS[1:]:
        values = _extremes(space, _source(space, name), settings, base)
        low[name] = _layout_rank(values, low["lora_r"], largest=False)
        high[name] = _layout_rank(values, high["lora_r"], largest=True)
    balances = _extremes(space, "loss_balance", settings, base)
    low["loss_balance"] = min(balances, key=lambda b: _BALANCE_COST.get(b, 0))
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
            if target in point and name not in (*RANKS, "lora_dropout"):
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
    # A declared GPU is the cluster's: model.dtype auto is then taken as bfloat16, not as
    # whatever this machine's GPU would pick.
    local_gpu = cfg.resources.gpu_memory_gb is None
    workers = cfg.resources.train_workers
    strategy = cfg.resources.strategy
    estimates = _estimates(resolved, data, [*smallest, *largest], device, log, local_gpu, workers, strategy)
    if estimates is None:
        return
    small = min(estimates[: len(smallest)], key=lambda e: e.total)
    large = max(estimates[len(smallest) :], key=lambda e: e.total)
    where = (
        "per trial on its GPU" if device == "cuda" else "per trial on the CPU (resources.gpus_per_trial: 0)"
    )
    if workers > 1:
        on = "its GPU" if device == "cuda" else "the CPU"
        split = (
            f"trains on {-(-cfg.budget.batch_size // workers)} of the batch's {cfg.budget.batch_size} samples"
        )
        where = (
            f"per train worker on {on} (resources.train_workers: {workers}, ddp: each holds the model and "
            f"{split}; the main rank's, which also evaluates)"
            if strategy == "ddp"
            else f"per train worker on {on} (resources.train_workers: {workers}, fsdp: each holds "
            f"1/{workers} of every parameter, gathers a layer at a time and {split})"
        )
    dtype = str(large.dtype).removeprefix("torch.")
    import torch

    auto = device == "cuda" and cfg.model.dtype == "auto" and not (local_gpu and torch.cuda.is_available())
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
            f"the {human_bytes(budget)} {'each train worker' if workers > 1 else 'a trial'} gets "
            f"({source} {human_bytes(gpu)} x gpus_per_trial {share:g})"
        )
        fixes = _remedies(resolved, cfg.search_space, share, large, budget, workers)
        # What is refused: the training step, or the evaluation without its upper-bound
        # ``forward`` part; the rest (that part, the constants) may not fit: a warning.
        firm = max(large.training, sum(large.evaluation.values()) - large.evaluation.get("forward", 0))
        if firm > budget:
            problem = (
                f"the largest configuration the space allows needs about {human_bytes(firm)} of "
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
                f"warning: the largest configuration may not fit: {human_bytes(large.total)} with the "
                f"evaluation's working memory (an upper bound), the CUDA context and allocator slack, "
                f"against {got}; {fixes}"
            )
    elif device == "cuda":
        report.append(
            "  note: set resources.gpu_memory_gb (GiB per GPU) to have the sweep check this against "
            "the memory a trial gets"
        )
    for line in report:
        log(line)


def _remedies(cfg: RunConfig, space: Space, share: float, large: Any, budget: float, workers: int = 1) -> str:
    evaluation = sum(large.evaluation.values())
    fixes = []
    if evaluation > large.training:
        fixes.append(
            f"lower budget.eval_batch_size (now {cfg.budget.eval_batch_size}: evaluation is the peak)"
        )
    ranks = [n for n in RANKS if n in space.searched]
    if ranks:
        fixes.append("lower the top of the rank range (" + ", ".join(f"space.{n}" for n in ranks) + ")")
    if large.training > budget:  # the training step itself: what shrinks it
        fixes.append(f"lower budget.batch_size (now {cfg.budget.batch_size})")
        if workers < cfg.budget.batch_size:
            fixes.append(
                f"split each batch over more train workers (resources.train_workers, now {workers}: "
                "each trains on its share)"
            )
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
    cfg: RunConfig,
    data: Any,
    points: list[TrialParams],
    device: str,
    log: Callable[[str], None],
    local_gpu: bool,
    workers: int = 1,
    strategy: str = "ddp",
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
    except Exception as exc:  # noqa: BLE001 - a model the estimate cannot read must not block a sweep
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        log(f"note: no memory estimate: the model's config and processor cannot be read here ({first})")
        return None
    if sys.stderr.isatty():  # a progress line for the person waiting; logs get the result
        log("estimating each trial's memory (the model without weights; its vision tower on the CPU)...")
    try:
        # The longest sample and largest image of either split: evaluations run on val.
        shape = data_shape(cfg, [*data.train, *data.val], processing)
        groups = module_groups(cfg.model, hf_config.model_type)
        return [
            estimate(
                cfg,
                p,
                shape,
                hf_config,
                groups,
                device=device,
                n_tasks=len(data.tasks),
                local_gpu=local_gpu,
                train_workers=workers,
                strategy=strategy,
            )
            for p in points
        ]
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an estimate that cannot be made must not block a sweep
        first = (str(exc).splitlines() or [""])[0]
        log(
            f"note: no memory estimate for this model ({type(exc).__name__}: {first}); the sweep runs "
            "without it (please report it)"
        )
        return None
