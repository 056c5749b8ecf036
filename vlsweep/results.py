"""What a finished (or running) sweep found, as plain data: the report draws it, export
picks from it, and the tests check it without drawing anything.

Everything here reads one list of trials, taken once from the study.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep import outcomes, pareto
from vlsweep.errors import UserInputError
from vlsweep.metrics import METRICS
from vlsweep.params import GROUP_LR

_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")


@dataclass
class SweepResults:
    """One read of a study: its trials, objectives and the sweep config it ran."""

    study: optuna.Study
    name: str
    metric_names: list[str]
    directions: list[str]  # "minimize" / "maximize", one per objective
    trials: list[FrozenTrial]
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, study: optuna.Study) -> SweepResults:
        directions = [d.name.lower() for d in study.directions]
        names = list(study.metric_names or [f"value{i}" for i in range(len(directions))])
        return cls(
            study=study,
            name=study.study_name,
            metric_names=names,
            directions=directions,
            trials=study.get_trials(deepcopy=False),
            config=study.user_attrs.get("config") or {},
        )

    @cached_property
    def complete(self) -> list[FrozenTrial]:
        """Full-budget trials with finite objectives (the searcher tells nothing else COMPLETE)."""
        return [t for t in self.trials if t.state == TrialState.COMPLETE and t.values]

    @cached_property
    def front(self) -> list[FrozenTrial]:
        return outcomes.pareto_front(self.study, self.trials)

    @cached_property
    def baseline(self) -> FrozenTrial | None:
        return next((t for t in self.complete if t.user_attrs.get("baseline")), None)

    def value(self, trial: FrozenTrial, metric: str) -> float | None:
        """An objective value or a recorded metric (user attr) of a trial."""
        if metric in self.metric_names and trial.values:
            return float(trial.values[self.metric_names.index(metric)])
        v = trial.user_attrs.get(metric)
        return float(v) if isinstance(v, (int, float)) else None

    def trial(self, number: int) -> FrozenTrial:
        for t in self.trials:
            if t.number == number:
                return t
        raise UserInputError(f"--pick trial:{number}: study {self.name!r} has no trial {number}")


# -- picking a trial ----------------------------------------------------------------------


def parse_where(exprs: list[str], known: list[str]) -> list[tuple[str, str, float]]:
    """``--where 'cer<=0.05'`` (repeatable) into (metric, op, bound); all problems at once."""
    out, problems = [], []
    for expr in exprs:
        for part in (p for p in expr.split(",") if p.strip()):
            m = _WHERE.match(part)
            if not m:
                problems.append(f"--where {part.strip()!r}: write METRIC OP NUMBER, e.g. 'cer<=0.05'")
                continue
            metric, op, bound = m.group(1), m.group(2), float(m.group(3))
            if metric not in known:
                problems.append(
                    f"--where {part.strip()!r}: unknown metric {metric!r}; known: {', '.join(known)}"
                )
                continue
            out.append((metric, op, bound))
    if problems:
        raise UserInputError(problems)
    return out


def _holds(value: float | None, op: str, bound: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return {
        "<=": value <= bound,
        ">=": value >= bound,
        "<": value < bound,
        ">": value > bound,
        "==": value == bound,
    }[op]


def knee(front: list[FrozenTrial], directions: list[str]) -> FrozenTrial:
    """The front's knee (``pareto.knee``); ties go to the lower trial number."""
    ordered = sorted(front, key=lambda t: t.number)
    return ordered[pareto.knee([t.values for t in ordered], directions)]


def pick(results: SweepResults, how: str, where: list[tuple[str, str, float]] | None = None) -> FrozenTrial:
    """``knee``, ``best:METRIC`` or ``trial:N``, among feasible COMPLETE trials passing ``where``."""
    where = where or []
    if how.startswith("trial:"):
        try:
            number = int(how.removeprefix("trial:"))
        except ValueError:
            raise UserInputError(f"--pick {how!r}: write trial:N with N a trial number") from None
        t = results.trial(number)
        if t.state != TrialState.COMPLETE:
            raise UserInputError(
                f"--pick {how}: trial {number} is {t.state.name}, not COMPLETE"
                + (f" ({t.user_attrs['error']})" if t.user_attrs.get("error") else "")
            )
        failing = [f"{m}{op}{b:g}" for m, op, b in where if not _holds(results.value(t, m), op, b)]
        if failing:
            raise UserInputError(
                f"--pick {how}: trial {number} does not satisfy --where {', '.join(failing)}"
            )
        return t
    pool = [
        t
        for t in results.complete
        if outcomes.feasible(t) and all(_holds(results.value(t, m), op, b) for m, op, b in where)
    ]
    if not pool:
        cond = " and ".join(f"{m}{op}{b:g}" for m, op, b in where)
        raise UserInputError(
            f"no feasible COMPLETE trial in study {results.name!r}"
            + (f" satisfies --where {cond}; loosen it" if where else "")
        )
    if how == "knee":
        return knee(outcomes.pareto_front(results.study, pool), results.directions)
    if how.startswith("best:"):
        metric = how.removeprefix("best:")
        if metric not in results.metric_names:
            raise UserInputError(
                f"--pick {how}: {metric!r} is not an objective; choose from {results.metric_names}"
            )
        i = results.metric_names.index(metric)
        sign = 1.0 if results.directions[i] == "minimize" else -1.0
        # Among equals on this objective, the better on the others (a front point).
        front = outcomes.pareto_front(results.study, pool)
        return min(front, key=lambda t: (sign * t.values[i], t.number))
    raise UserInputError(f"--pick {how!r}: choose knee, best:METRIC or trial:N")


# -- plot data ----------------------------------------------------------------------------


@dataclass
class ParetoPoint:
    number: int
    values: list[float]
    kind: str  # "front", "dominated" or "infeasible"
    picked: bool
    baseline: bool
    params: dict[str, Any]


def pareto_points(results: SweepResults, picked: FrozenTrial | None) -> list[ParetoPoint]:
    """Every full-budget trial, marked front / dominated / infeasible."""
    front = {t.number for t in results.front}
    out = []
    for t in results.complete:
        kind = "infeasible" if not outcomes.feasible(t) else ("front" if t.number in front else "dominated")
        out.append(
            ParetoPoint(
                number=t.number,
                values=list(t.values),
                kind=kind,
                picked=picked is not None and t.number == picked.number,
                baseline=bool(t.user_attrs.get("baseline")),
                params=dict(t.params),
            )
        )
    return out


def reference_point(results: SweepResults) -> list[float]:
    """Hypervolume reference, in each objective's own direction: the worst value seen,
    and never better than the metric's natural worst (CER 1, IoU 0; ``METRICS``)."""
    ref = []
    for i, (name, d) in enumerate(zip(results.metric_names, results.directions, strict=True)):
        metric = METRICS.get(name)
        natural = metric.worst if metric is not None else None
        seen = [t.values[i] for t in results.complete]
        worst = (max(seen) if d == "minimize" else min(seen)) if seen else (natural or 0.0)
        if natural is not None:
            worst = max(worst, natural) if d == "minimize" else min(worst, natural)
        ref.append(float(worst))
    return ref


def hypervolume_history(results: SweepResults, ref: list[float] | None = None) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible COMPLETE trials up to it), in trial order."""
    ref = ref or reference_point(results)
    directions = results.directions
    out: list[tuple[int, float]] = []
    front: list[list[float]] = []  # the non-dominated points so far: they alone set the volume
    hv = 0.0
    for t in sorted(results.trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.values and outcomes.feasible(t):
            p = list(t.values)
            if not any(pareto.weakly_dominates(f, p, directions) for f in front):
                front = [f for f in front if not pareto.weakly_dominates(p, f, directions)] + [p]
                # Recomputed only when the front moves: linear in trials, not quadratic.
                hv = pareto.hypervolume(front, ref, directions)
        if t.state.is_finished():
            out.append((t.number, hv))
    return out


def importances(results: SweepResults) -> dict[str, dict[str, float]]:
    """Parameter importances (Optuna's default evaluator, PED-ANOVA) for each objective.

    An objective with too few trials to tell, or one that never varied, gets an empty dict.
    """
    import warnings

    out: dict[str, dict[str, float]] = {}
    for i, (name, d) in enumerate(zip(results.metric_names, results.directions, strict=True)):
        if len({t.values[i] for t in results.complete}) < 2:
            out[name] = {}
            continue
        sign = 1.0 if d == "minimize" else -1.0  # the evaluator ranks by low target values
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                snapshot = cast(optuna.Study, outcomes.TrialsSnapshot(results.study, results.trials))
                imp = optuna.importance.get_param_importances(
                    snapshot,  # the trials already read: no second read of the study
                    target=functools.partial(_signed_value, i, sign),
                )
            out[name] = {k: float(v) for k, v in imp.items()}
        except (RuntimeError, ValueError):
            out[name] = {}
    return out


def _signed_value(i: int, sign: float, trial: FrozenTrial) -> float:
    return sign * trial.values[i]


def lr_against_objectives(results: SweepResults) -> dict[str, list[dict[str, float]]]:
    """For each per-module learning rate searched: (lr, every objective, trial) per COMPLETE trial."""
    out: dict[str, list[dict[str, float]]] = {}
    for p in GROUP_LR.values():
        rows = [
            {
                "trial": t.number,
                "lr": float(t.params[p]),
                **dict(zip(results.metric_names, t.values, strict=True)),
            }
            for t in results.complete
            if p in t.params
        ]
        if rows:
            out[p] = rows
    return out


def front_rows(results: SweepResults) -> list[dict[str, Any]]:
    """The Pareto front as table rows: trial, objectives, parameters, where its logs are."""
    base = results.baseline
    rows = []
    for t in results.front:
        rows.append(
            {
                "trial": t.number,
                **dict(zip(results.metric_names, t.values, strict=True)),
                "dominates_baseline": bool(
                    base is not None
                    and t.number != base.number
                    and pareto.dominates(t.values, base.values, results.directions)
                ),
                "params": dict(t.params),
                "log_dir": t.user_attrs.get("log_dir"),
                "peak_gpu_memory_gb": t.user_attrs.get("peak_gpu_memory_gb"),
                "world_size": t.user_attrs.get("world_size"),
            }
        )
    return rows


def carried_rows(results: SweepResults) -> list[dict[str, Any]]:
    """The points carried from a smaller model's study, each with its metrics there
    (``source``) and here (``target``: None until the trial completes), knee first."""
    rows = []
    for t in results.trials:
        carried = t.user_attrs.get(outcomes.CARRIED_ATTR)
        if not isinstance(carried, dict) or t.user_attrs.get("requeued"):
            continue  # a lost run that was queued again: its re-run is the row
        done = t.state == TrialState.COMPLETE and t.values
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "study": carried.get("study"),
                "source_trial": carried.get("trial"),
                "knee": bool(carried.get("knee")),
                "source": dict(carried.get("values") or {}),
                "target": dict(zip(results.metric_names, t.values, strict=True)) if done else None,
                "clipped": list(carried.get("clipped") or []),
            }
        )
    return sorted(rows, key=lambda r: r["trial"])


def short(value: Any) -> str:
    """A parameter value for a table: 3 significant digits, "-" when absent."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
