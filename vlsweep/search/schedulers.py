"""The sweep's early-stopping schedulers: ``make_scheduler`` builds the one
``search.early_stopping`` names (Ray's ASHA, or MO-ASHA below) and ``rung_steps`` says
where trials are judged (they evaluate there).

Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

Schmucker et al. 2021, "Multi-objective Asynchronous Successive Halving", in its stopping
form (as Ray's ASHA): rungs at ``grace * eta**k`` training steps below the step budget
(``budget.steps``).
When a trial first reports at or past a rung, its objective vector there is recorded,
and it continues only if it ranks in the top ``ceil(n / eta)`` of the ``n`` trials
recorded at that rung so far (itself included); otherwise Tune stops it, and the
searcher tells Optuna PRUNED with the steps it reached. Trials that reach the budget
are never stopped here, so only full-budget trials form the front.

Ranking: non-dominated sorting (NSGA-II fronts), then within a front by crowding
distance, larger first. We chose crowding distance over hypervolume contribution for
the tie-break because it needs no reference point: at an early rung the objectives
(CER near 1, IoU near 0) sit in a corner where any fixed reference point would weigh
one objective far more than the other, while crowding distance normalizes each
objective by the spread seen at that rung and keeps trials spread along the front,
which is what a user picking a trade-off later needs. Ties that remain go to the trial
recorded first.

Written here because no Ray Tune scheduler is multi-objective and Syne Tune's MO-ASHA
does not run on Ray. The sorting and crowding distance are ``vlsweep.pareto``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from vlsweep.pareto import rank
from vlsweep.search.config import SweepConfig


def rungs(grace: int, eta: int, max_t: int) -> list[int]:
    """Rung milestones below the budget: grace, grace*eta, ... (< max_t)."""
    out, r = [], grace
    while r < max_t:
        out.append(r)
        r *= eta
    return out


@dataclass
class Rung:
    milestone: int
    recorded: dict[str, list[float]] = field(default_factory=dict)  # trial id -> minimized objectives


class MOASHAScheduler(FIFOScheduler):
    """Stops trials that are not in the top 1/eta of their rung by non-dominated sorting."""

    def __init__(
        self,
        *,
        metrics: list[str],
        modes: list[str],
        max_t: int,
        grace_period: int,
        reduction_factor: int = 3,
        time_attr: str = "steps",
    ):
        super().__init__()
        if len(metrics) != len(modes) or not metrics:
            raise ValueError("give one mode (min/max) per metric")
        if grace_period < 1 or reduction_factor < 2 or max_t <= grace_period:
            raise ValueError("need 1 <= grace_period < max_t and reduction_factor >= 2")
        self.metrics, self.modes = list(metrics), list(modes)
        self.max_t, self.eta, self.time_attr = max_t, reduction_factor, time_attr
        self.rungs = [Rung(m) for m in rungs(grace_period, reduction_factor, max_t)]
        self._next_rung: dict[str, int] = {}  # trial id -> index of the next rung to record

    def _vector(self, result: dict[str, Any]) -> list[float] | None:
        out = []
        for metric, mode in zip(self.metrics, self.modes, strict=True):
            value = result.get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return None
            out.append(float(value) if mode == "min" else -float(value))
        return out

    def on_result(self, trial_id: str, result: dict[str, Any]) -> str:
        """The decision for one result (Tune's hook calls this; tests call it directly)."""
        t = result.get(self.time_attr)
        vector = self._vector(result)
        if t is None or vector is None:  # a training-curve row, or a failed metric
            return TrialScheduler.CONTINUE
        if t >= self.max_t:  # the trial is done: a full-budget result is never judged
            self._next_rung[trial_id] = len(self.rungs)
            return TrialScheduler.CONTINUE
        k = self._next_rung.get(trial_id, 0)
        action = TrialScheduler.CONTINUE
        while k < len(self.rungs) and t >= self.rungs[k].milestone:
            rung = self.rungs[k]
            rung.recorded[trial_id] = vector
            k += 1
            ids = list(rung.recorded)
            keep = math.ceil(len(ids) / self.eta)
            top = {ids[i] for i in rank([rung.recorded[x] for x in ids])[:keep]}
            decision = TrialScheduler.CONTINUE if trial_id in top else TrialScheduler.STOP
            if decision == TrialScheduler.STOP:
                action = decision
                break
        self._next_rung[trial_id] = k
        return action

    # -- Ray Tune's hooks ---------------------------------------------------------------------

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self.on_result(trial.trial_id, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._next_rung.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._next_rung.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return "MO-ASHA rungs: " + ", ".join(
            f"{r.milestone} steps: {len(r.recorded)} trials" for r in self.rungs
        )


def rung_steps(cfg: SweepConfig) -> list[int]:
    """The rungs early stopping judges trials at (none without early stopping)."""
    if cfg.search.early_stopping == "none":
        return []
    return rungs(grace_steps(cfg), cfg.search.reduction_factor, cfg.budget.steps)


# The first rung, as a share of the trial's steps, when search.grace_steps is not given:
# the earliest share at which both objectives' early values rank the configs as their
# final values do (Spearman >= 0.75) on the demo's 300 recorded curves; at 10% IoU's
# is +0.23, at 20% +0.78 (docs/benchmarks.md, "Which fidelity the early signal supports").
GRACE_SHARE = 0.2


def grace_steps(cfg: SweepConfig) -> int:
    return cfg.search.grace_steps or max(1, round(cfg.budget.steps * GRACE_SHARE))


def make_scheduler(cfg: SweepConfig, names: list[str], directions: Sequence[str]) -> Any:
    """The Ray Tune scheduler ``search.early_stopping`` names (None: run every trial to the end)."""
    modes = ["min" if d == "minimize" else "max" for d in directions]
    if cfg.search.early_stopping == "mo-asha":
        return MOASHAScheduler(
            metrics=names,
            modes=modes,
            max_t=cfg.budget.steps,
            grace_period=grace_steps(cfg),
            reduction_factor=cfg.search.reduction_factor,
        )
    if cfg.search.early_stopping == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="steps",
            metric=names[0],
            mode=modes[0],
            max_t=cfg.budget.steps,
            grace_period=grace_steps(cfg),
            reduction_factor=cfg.search.reduction_factor,
        )
    return None
