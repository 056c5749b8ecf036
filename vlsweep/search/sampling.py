"""What the sampler sees: Optuna's sampler for ``search.sampler``, reading the study once per
ask, in trial-number order for a reproducible sweep, and learning from the rungs of trials
stopped early.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep.errors import UserInputError
from vlsweep.outcomes import TrialsSnapshot


def make_sampler(
    kind: str,
    seed: int | None,
    window: int | None = None,
    rungs: Sequence[int] = (),
    prior: Sequence[FrozenTrial] = (),
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler with Optuna's defaults, reading the study once per ask. With
    ``window`` (the sweep's concurrency), each ask sees a history that depends on the
    trial's number only (``OneReadPerAsk``), so a seeded sweep proposes the same points
    however its trials' completions interleave. With ``rungs`` (early stopping), TPE
    learns from what stopped trials measured at the rungs (``at_highest_rung``). With
    ``prior`` (a carried study's trials, numbered below 0), the sampler sees them before
    the study's own: knowledge, not trials of the study (``search/transfer.py``)."""
    if kind == "tpe":
        inner: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed)
    elif kind == "nsga2":
        inner = optuna.samplers.NSGAIISampler(seed=seed)
    elif kind == "gp":
        inner = optuna.samplers.GPSampler(seed=seed)
    elif kind == "random":
        inner = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise UserInputError(f"search.sampler: unknown sampler {kind!r}; choose tpe, nsga2, gp or random")
    # NSGA-II reads its generations by list position, which prior trials would shift.
    prior = prior if kind in ("tpe", "gp") else ()
    return OneReadPerAsk(inner, window=window, rungs=rungs if kind == "tpe" else (), prior=prior)


# User attr of a trial under early stopping: {"<steps>": [objective values]} at each rung
# it reached, in the study's objective order.
RUNG_ATTR = "rungs"


def at_highest_rung(trials: list[FrozenTrial], rungs: Sequence[int]) -> list[FrozenTrial]:
    """The trials as a sampler should see them under early stopping: judged at the highest
    fidelity that has enough of them, as BOHB's model does (Falkner et al. 2018).

    A trial a scheduler stopped is PRUNED, and Optuna's TPE then knows only that it was
    worse than the ones that went on: what it measured at the rungs is lost, and with
    successive halving most trials are stopped. Here, while fewer than ``d + 1`` trials
    (``d``: the parameters searched) finished the whole budget, the highest rung that
    ``d + 1`` trials reached stands in for the budget: every trial measured there is
    COMPLETE with its values at that rung; one stopped before it stays PRUNED (worse at a
    lower rung), a running one stays RUNNING, a failed one (a crash, or a trial re-queued
    after an interruption) stays FAIL, and a COMPLETE trial with no value at that rung (a
    warm-start point added with its values) is left out. From ``d + 1`` full-budget
    trials on, the trials are returned unchanged. The sampling itself is Optuna's.
    """
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    n_min = len({name for t in finished for name in t.distributions}) + 1
    if n_min < 2 or sum(t.state == TrialState.COMPLETE for t in finished) >= n_min:
        return trials
    for rung in sorted(rungs, reverse=True):
        key = str(rung)
        measured = {t.number for t in finished if key in t.user_attrs.get(RUNG_ATTR, {})}
        if len(measured) < n_min:
            continue
        out = []
        for t in trials:
            if t.number in measured:
                t = copy.copy(t)
                t.state, t.values = TrialState.COMPLETE, list(t.user_attrs[RUNG_ATTR][key])
                t.intermediate_values = {}
            elif t.state == TrialState.COMPLETE:
                continue  # values at another fidelity (a warm-start point): left out
            out.append(t)
        return out
    return trials


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def reproducible_slot(trials: list[FrozenTrial], window: int) -> tuple[int, list[int]]:
    """The number the next ask gets, and the trials that must finish before it may be
    asked for a reproducible sweep: every trial ``window`` or more numbers before it."""
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    number = min(waiting) if waiting else len(trials)
    return number, [t.number for t in trials if t.number <= number - window and t.state not in FINISHED]


class OneReadPerAsk(optuna.samplers.BaseSampler):
    """Runs ``inner`` on one read of the study's trials per ask, instead of one per parameter.

    Optuna 5's TPE (``constant_liar=True`` by default, which a parallel sweep wants)
    re-reads every trial from the database for each parameter it samples: with SQLite and
    7 parameters per trial, a third of the driver's time per trial when it was measured
    (``benchmarks/trial_overhead.py --profile``).
    Within one ask nothing else writes the study (the sweep driver is the only writer; a
    second driver is refused), and the one thing that changes, the asked trial's own
    parameters, is what samplers exclude; so one read per ask gives the sampler the same
    trials. The sampling itself is ``inner``'s, unchanged.

    With ``window`` (reproducible sweeps), trial k sees trials up to k - window as they
    ended, and the ``window - 1`` trials before it as still running, whether or not they
    have finished by then (the searcher asks for trial k only once the earlier ones have
    ended). What a trial is proposed then depends on its number, not on which of the
    trials in flight happened to finish first.

    With ``rungs`` (early stopping), the trials are then seen ``at_highest_rung``; ``prior``
    trials (a carried study's) are seen before the study's own, as they ended.
    """

    def __init__(
        self,
        inner: optuna.samplers.BaseSampler,
        window: int | None = None,
        rungs: Sequence[int] = (),
        prior: Sequence[FrozenTrial] = (),
    ):
        self.inner = inner
        self.window = window
        self.rungs = list(rungs)
        self.prior = list(prior)
        self._view: TrialsSnapshot | None = None

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        if self._view is None or self._view.study is not study:
            self._view = TrialsSnapshot(study)
            if self.window or self.rungs or self.prior:
                trials = self._view.get_trials(deepcopy=False)
                if self.window:
                    trials = _as_of(trials, trial.number, self.window)
                prior = self.prior
                if self.rungs:
                    seen = at_highest_rung(trials, self.rungs)
                    if seen is not trials:
                        # Judged at a rung: a carried study's full-budget values would
                        # mix fidelities, as warm-start values would (left out there too).
                        prior = []
                    trials = seen
                self._view._trials = [*prior, *trials]
        return self._view

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._view = None  # a new ask: read the study afresh (once)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.inner.infer_relative_search_space(self._seen(study, trial), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict:
        return self.inner.sample_relative(self._seen(study, trial), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any) -> Any:
        return self.inner.sample_independent(self._seen(study, trial), trial, name, dist)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._view = None
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def _as_of(trials: list[FrozenTrial], number: int, window: int) -> list[FrozenTrial]:
    """The trials as trial ``number`` of a reproducible sweep sees them: the ones less than
    ``window`` numbers before it as RUNNING, their parameters kept, their outcome hidden."""
    out = []
    for t in trials:
        if number - window < t.number < number and t.state in FINISHED:
            t = copy.copy(t)
            t.state, t.values, t.datetime_complete = TrialState.RUNNING, None, None
            t.intermediate_values = {}
        out.append(t)
    return out
