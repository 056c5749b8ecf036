"""Multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

Schmucker et al. 2021, "Multi-objective Asynchronous Successive Halving", in its stopping
form (as Ray's ASHA): rungs at ``grace * eta**k`` training steps below the trial budget.
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
does not run on Ray; the non-dominated sort is ours too (a few dozen points per rung).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def non_dominated_fronts(points: list[list[float]]) -> list[list[int]]:
    """Indices of ``points`` (all objectives minimized) by Pareto front, best first."""
    n = len(points)
    dominated_by = [0] * n
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = points[i], points[j]
            if all(x <= y for x, y in zip(a, b, strict=True)) and any(
                x < y for x, y in zip(a, b, strict=True)
            ):
                dominates[i].append(j)
                dominated_by[j] += 1
            elif all(y <= x for x, y in zip(a, b, strict=True)) and any(
                y < x for x, y in zip(a, b, strict=True)
            ):
                dominates[j].append(i)
                dominated_by[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding_distance(points: list[list[float]]) -> list[float]:
    """NSGA-II crowding distance of each point within one front (boundaries: infinite)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            dist[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist


def rank(points: list[list[float]]) -> list[int]:
    """Indices of ``points`` from best to worst: front, then crowding distance, then index."""
    out: list[int] = []
    for front in non_dominated_fronts(points):
        crowd = crowding_distance([points[i] for i in front])
        out += [i for _, i in sorted(zip(crowd, front, strict=True), key=lambda ci: (-ci[0], ci[1]))]
    return out


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
