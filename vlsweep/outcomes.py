"""What a study's trials say, for every reader (status, report, export) and the sweep's
progress line alike: counts by state, the trials that count toward the trial budget,
feasibility, the Pareto front, and a study whose trials are read once.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep import pareto


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in trials:
        out[t.state.name] += 1
    return out


def finished_toward_trials(trials: list[FrozenTrial]) -> int:
    """Finished trials that Ray ran and that count toward the trial budget.

    Warm-start points added with known values were not run here, and a trial lost with a
    killed driver is re-queued and counted once, by its re-run.
    """
    return sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        and "ray_trial_id" in t.user_attrs
        and not t.user_attrs.get("requeued")
    )


def feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: every value given to ``trial.set_constraint`` is <= 0. Read through
    ``FrozenTrial.constraints``, which knows both of Optuna's formats: one list under
    ``constraints`` and, since Optuna 5, one ``constraints:<name>`` attr per constraint
    (what ``set_constraint`` writes)."""
    return all(c <= 0 for c in trial.constraints.values())


# The user attr a target trial holds when it re-runs a point of a carried study (a smaller
# model's, search/transfer.py): {"study", "trial", "knee", "values": {metric: value},
# "clipped": [...]}; status and the report show it beside the trial's own metrics.
CARRIED_ATTR = "carried"


def pareto_front(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """COMPLETE, feasible, non-dominated trials (equal ones all stay), sorted by the first
    objective. Not ``study.best_trials``: that one reads the study again on every call,
    and the progress line and the reports already hold the trials."""
    directions = [d.name.lower() for d in study.directions]
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
    members = [done[i] for i in pareto.front([t.values for t in done], directions)]
    return sorted(members, key=lambda t: (t.values[0], t.number))


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


class TrialsSnapshot:
    """A study whose trials are read once (lazily, or given): what a sampler sees during one
    ask, or what Optuna's importance evaluators read in a report that already holds them."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial] | None = None):
        self.study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        if self._trials is None:
            self._trials = self.study._storage.get_all_trials(self.study._study_id, deepcopy=False)
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list:
        return self._get_trials()
