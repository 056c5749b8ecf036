"""The sweep config resolved once, at the door, into what the sweep runs on.

Everything the driver derives from the config (the parsed space and constraints,
Optuna's distributions, the objectives, the sampler's window and rungs, what each trial
asks Ray for, the config as the study records it, the trial spec every worker gets) is
derived here, once, by ``resolve``; the sweep loop and everything it calls read the plan
instead of asking the config again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlsweep.search.backend import trial_resources
from vlsweep.search.config import SweepConfig, distributions, sanitized_config
from vlsweep.search.schedulers import rung_steps
from vlsweep.spaces import Space


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    cfg: SweepConfig
    base_dir: Path  # relative data paths in the config are relative to it
    space: Space
    settings: dict[str, Any]  # the config keys a space condition may name
    constraints: list[tuple[str, str, float]]  # (metric, "<=" or ">=", bound)
    distributions: dict[str, Any]  # Optuna's, per parameter of the space
    objective_names: list[str]
    directions: list[Literal["minimize", "maximize"]]
    window: int | None  # a reproducible sweep's concurrency; None: not reproducible
    sampler_rungs: list[int]  # the rungs the sampler learns from ([]: it does not)
    request: dict[str, float]  # what each trial asks Ray for, in Ray's resource names
    recorded_config: dict[str, Any]  # the config as the study records it (sanitized)
    trial_spec: dict[str, Any]  # the train config each trial runs, as JSON
    out_root: Path  # where the trials' own directories go (absolute)
    ray_storage_path: str  # where Ray Tune keeps its results (a URI, or a path)


def resolve(cfg: SweepConfig, base_dir: Path) -> SweepPlan:
    """The plan of ``cfg``, whose relative paths are relative to ``base_dir``."""
    recorded = sanitized_config(cfg, base_dir)
    space = cfg.search_space
    out_root = Path(cfg.output_dir or f"runs/{cfg.name}")
    out_root = (out_root if out_root.is_absolute() else Path.cwd() / out_root).resolve()
    return SweepPlan(
        cfg=cfg,
        base_dir=base_dir,
        space=space,
        settings=cfg.settings(),
        constraints=cfg.constraint_bounds,
        distributions=distributions(space),
        objective_names=[o.name for o in cfg.objectives],
        directions=[o.direction or "minimize" for o in cfg.objectives],
        window=cfg.search.max_concurrent if cfg.search.reproducible else None,
        sampler_rungs=rung_steps(cfg) if cfg.search.learn_from_rungs else [],
        request=trial_resources(cfg),
        recorded_config=recorded,
        trial_spec=trial_spec(cfg, recorded),
        out_root=out_root,
        ray_storage_path=cfg.ray.storage_path or str(out_root / "ray"),
    )


def trial_spec(cfg: SweepConfig, recorded: dict[str, Any]) -> dict[str, Any]:
    """The train config every trial of the sweep runs (its parameters come per trial): the
    data and model as the study records them (paths absolute), and an evaluation at every
    rung, so early stopping judges measured metrics."""
    train = cfg.train_config().model_dump(mode="json")
    train["data"], train["model"] = recorded["data"], recorded["model"]
    train["budget"]["eval_at"] = sorted({*train["budget"]["eval_at"], *rung_steps(cfg)})
    return train
