"""Multi-fidelity search on recorded learning curves: vlsweep's MO-ASHA against its peers.

Replays sweeps over ``benchmarks/data/learning_curves.jsonl`` (written by
``learning_curves.py``: every evaluation of random configs of the demo, every 20 of its
200 steps) the way tabular HPO benchmarks do: a method proposes a point of the demo's
search space, the nearest recorded config (1-NN in the normalized space: log scale for
log-scaled parameters) stands in for it, and its recorded curve is what the trial
reports. Time is training steps; 2 trials run at once (``--workers``) and report in the
order their steps dictate, so the schedulers see results asynchronously, as on Ray.
Every method gets the same budget: the training steps full-budget TPE spends on
``--budget-trials`` trials.

Methods (each over the same seeds):

- ``tpe-full``: every trial runs 200 steps; TPE (vlsweep's default sampler) is told
  each trial's final values;
- ``mo-asha-random`` / ``mo-asha-tpe``: vlsweep's ``MOASHAScheduler`` stops trials at
  the rungs; proposals random, or TPE told PRUNED for a stopped trial;
- ``mo-asha-rung-tpe``: the same with what a sweep does by default
  (``search.learn_from_rungs``): TPE sees the trials at the highest rung that has enough
  of them (``vlsweep.search.sampling.at_highest_rung``);
- ``mo-asha-losses``: a candidate measured here, not a sweep option: rung-TPE with the
  rungs from 10% of the steps (20, 60, 180) ranked by each task's validation loss;
- ``optunahub-multimetric``: Optuna's TPE with OptunaHub's ``MultiMetricPruner``
  (Pareto rank per step, ``joint=True``) over Optuna's ``SuccessiveHalvingPruner`` with
  the same rungs; loaded from a local copy of the registry (``--optunahub-registry``:
  a checkout of github.com/optuna/optunahub-registry), never from the network; left out
  when none is given;
- ``syne-tune-moasha``: Syne Tune's ``MOASHA`` (random proposals, non-dominated
  sorting) driven through its own scheduler API (suggest / on_trial_add /
  on_trial_result / on_trial_complete), on (cer, 1 - iou); ``syne-tune-moasha-ranked``:
  the same with its priority given as its contract states (``ranked_priority``: the
  default one returns a sort order where a priority per trial is expected);
- ``ray-asha-scalarized``: Ray Tune's ``ASHAScheduler`` on (1 - cer) * iou with Ray's
  random search, under real Ray Tune (a local Ray with ``--workers`` CPUs): the
  trainable replays the nearest config's curve, 1 ms of sleep per step, and a callback
  counts the steps every trial reported.

Score: hypervolume (moocore) of the full-budget trials' front against cer = 1, iou = 0,
as a function of training steps spent. Per seed, ``steps_to_95pct`` is the steps a
method spent when its hypervolume first reached 95% of full-budget TPE's final
hypervolume on that seed, divided by TPE's total steps (infinite if never); the median
over seeds is reported (null when infinite).

    python benchmarks/mf_replay.py [--seeds 10] [--budget-trials 48] [--workers 2]
        [--optunahub-registry DIR] [--json docs/benchmarks/mf_replay.json]
        [--png docs/benchmarks/mf_replay.png] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data" / "learning_curves.jsonl"
MAX_T = 200
REF = (1.0, 0.0)  # cer, iou: the natural worst values
BUDGETS = 20  # the equally spaced budgets the methods are compared at
LOSS_GRACE = 20  # mo-asha-losses' first rung
PEERS = (
    "tpe-full",
    "optunahub-multimetric",
    "syne-tune-moasha",
    "syne-tune-moasha-ranked",
    "ray-asha-scalarized",
)
# vlsweep's MO-ASHA as a sweep can run it (the verdict picks the better of these), and a
# candidate measured beside them.
OURS = ("mo-asha-random", "mo-asha-tpe", "mo-asha-rung-tpe")
CANDIDATES = ("mo-asha-losses",)
LOSSES = ["val_loss_ocr", "val_loss_grounding"]
METHODS = ("tpe-full", *OURS, *CANDIDATES, *PEERS[1:])

Point = tuple[float, float]  # (cer, iou)


class Table:
    """Recorded curves with 1-NN lookup in the normalized search space."""

    def __init__(self, rows: list[dict[str, Any]], space: Any):
        from vlsweep.spaces import CategoricalChoice, FloatRange

        self.rows = rows
        # Per searched parameter: name, log scale?, and the (lo, hi) it is normalized by.
        self.cols: list[tuple[str, bool, float, float]] = []
        columns = []
        for k, entry in space.searched.items():
            if not all(k in r["params"] for r in rows):
                continue
            log = isinstance(entry, FloatRange) and entry.log or isinstance(entry, CategoricalChoice)
            v = np.array([float(r["params"][k]) for r in rows])
            v = np.log(v) if log else v
            self.cols.append((k, log, float(v.min()), float(v.max())))
            columns.append(v)
        self.x = np.stack([self._norm(c, v) for c, v in zip(self.cols, columns, strict=True)], 1)

    @staticmethod
    def _norm(col: tuple[str, bool, float, float], v: Any) -> Any:
        _, _, lo, hi = col
        return (v - lo) / ((hi - lo) or 1.0)

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        q = np.array(
            [self._norm(c, math.log(float(params[c[0]])) if c[1] else float(params[c[0]])) for c in self.cols]
        )
        return self.rows[int(np.argmin(((self.x - q) ** 2).sum(1)))]


def recorded(row: dict[str, Any], steps: int) -> dict[str, float] | None:
    """Everything the evaluation at ``steps`` measured, or None if the config failed before."""
    return next((point for point in row["curve"] if point["steps"] == steps), None)


def at(row: dict[str, Any], steps: int) -> Point | None:
    """(cer, iou) recorded at ``steps``, or None if the config failed before."""
    point = recorded(row, steps)
    return None if point is None else (point["cer"], point["iou"])


def hypervolume(points: list[Point]) -> float:
    import moocore

    pts = np.array([[c, -i] for c, i in points if c < REF[0] and i > REF[1]])
    return float(moocore.hypervolume(pts, ref=np.array([REF[0], -REF[1]]))) if len(pts) else 0.0


# -- the simulated sweep ----------------------------------------------------------------------


class Method:
    """One search method as the replay drives it: propose a config, hear each evaluation
    (True: stop the trial there), hear the end of a trial."""

    def propose(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def result(self, handle: Any, steps: int, point: Point, measured: dict[str, float]) -> bool:
        """``point``: (cer, iou) at ``steps``; ``measured``: all the evaluation recorded."""
        return False

    def finish(self, handle: Any, point: Point | None) -> None:
        """``point``: the full-budget values, or None for a config that diverged."""


def replay(method: Method, table: Table, budget: int, workers: int) -> tuple[list[tuple[int, float]], int]:
    """Run one sweep in simulated time; returns ([(steps spent, hypervolume of the
    full-budget front)] at each full-budget trial, number of trials started)."""
    evals = sorted({p["steps"] for r in table.rows for p in r["curve"]})
    spent, history, front = 0, [(0, 0.0)], []
    running: list[tuple[int, int, Any, dict, int]] = []  # (time of next eval, id, handle, row, steps done)
    started = 0

    def start(now: int) -> None:
        nonlocal started
        handle, params = method.propose()
        heapq.heappush(running, (now + evals[0], started, handle, table.nearest(params), 0))
        started += 1

    for _ in range(workers):
        start(0)
    while running and spent < budget:
        clock, tid, handle, row, done = heapq.heappop(running)
        step = next(s for s in evals if s > done)
        spent += step - done
        value = at(row, step)
        if value is None:  # the config diverged here
            method.finish(handle, None)
            start(clock)
        elif step >= MAX_T:
            method.finish(handle, value)
            front.append(value)
            history.append((spent, hypervolume(front)))
            start(clock)
        elif method.result(handle, step, value, recorded(row, step) or {}):
            start(clock)
        else:
            heapq.heappush(
                running, (clock + next(s for s in evals if s > step) - step, tid, handle, row, step)
            )
    return history, started


class OptunaMethod(Method):
    """An Optuna study asked and told as vlsweep's searcher does, with an optional
    vlsweep scheduler stopping trials (told PRUNED) and rung values recorded."""

    def __init__(
        self, sampler: Any, space: Any, settings: dict, scheduler: Any = None, rungs: list[int] = ()
    ):
        import optuna

        self.study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
        self.space, self.settings, self.scheduler, self.rungs = space, settings, scheduler, list(rungs)

    def propose(self) -> tuple[Any, dict[str, Any]]:
        trial = self.study.ask()
        return trial, self.space.suggest(trial, self.settings)

    def result(self, trial: Any, steps: int, point: Point, measured: dict[str, float]) -> bool:
        from optuna.trial import TrialState

        from vlsweep.search.sampling import RUNG_ATTR

        if steps in self.rungs:  # what OptunaAskTellSearcher records at a rung
            trial.set_user_attr(RUNG_ATTR, {**trial.user_attrs.get(RUNG_ATTR, {}), str(steps): list(point)})
        if self.scheduler is None:
            return False
        if self.scheduler.on_result(str(trial.number), {**measured, "steps": steps}) != "STOP":
            return False
        self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def finish(self, trial: Any, point: Point | None) -> None:
        from optuna.trial import TrialState

        if point is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, list(point))


def rung_halving(eta: int) -> Any:
    """Successive halving's rule as an Optuna pruner on intermediate values alone: at the
    step a trial just reported, stop it unless its value there is among the best
    ceil(n / eta) of the n trials that reported that step, itself included (minimized:
    MultiMetricPruner hands it Pareto ranks). Written here because Optuna's
    ``SuccessiveHalvingPruner`` keeps its rungs in the trials' system attrs, which the
    study MultiMetricPruner builds does not carry, and ``PercentilePruner`` judges a
    trial by its best value over all steps so far, not at the rung."""
    import optuna

    class RungHalving(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            step = trial.last_step
            if step is None:
                return False
            mine = trial.intermediate_values[step]
            values = [
                t.intermediate_values[step]
                for t in study.get_trials(deepcopy=False)
                if t.number != trial.number and step in t.intermediate_values
            ] + [mine]
            return mine > sorted(values)[math.ceil(len(values) / eta) - 1]

    return RungHalving()


class OptunaHubMethod(OptunaMethod):
    """Optuna's TPE with OptunaHub's MultiMetricPruner (Pareto rank per step, joint=True),
    used as its README shows: ``MultiMetricPrunerTrial.report`` then ``should_prune``.

    Its base pruner cannot be Optuna's ``SuccessiveHalvingPruner`` (``sha_error``): that
    pruner records each rung's value in the trial's system attrs, and the pruner hands it
    a trial that is in no storage. The trial reports at the rungs only, and
    ``rung_halving`` applies successive halving's rule to its Pareto rank there.
    """

    def __init__(self, module: Any, sampler: Any, space: Any, settings: dict, rungs: list[int], eta: int):
        import optuna

        pruner = module.MultiMetricPruner(
            rung_halving(eta), metric_directions={"cer": "minimize", "iou": "maximize"}, joint=True
        )
        self.study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler, pruner=pruner)
        self.module, self.space, self.settings = module, space, settings
        self.scheduler, self.rungs = None, list(rungs)

    def propose(self) -> tuple[Any, dict[str, Any]]:
        trial = self.module.MultiMetricPrunerTrial(self.study.ask())
        return trial, self.space.suggest(trial, self.settings)

    def result(self, trial: Any, steps: int, point: Point, measured: dict[str, float]) -> bool:
        from optuna.trial import TrialState

        if steps not in self.rungs:
            return False
        trial.report({"cer": point[0], "iou": point[1]}, steps)
        if not trial.should_prune():
            return False
        self.study.tell(trial._trial, state=TrialState.PRUNED)
        return True

    def finish(self, trial: Any, point: Point | None) -> None:
        super().finish(trial._trial, point)


def sha_error(module: Any) -> str | None:
    """What MultiMetricPruner over SuccessiveHalvingPruner does at its first rung: two
    trials report at step 20 and ask should_prune (None if that works)."""
    import optuna

    study = optuna.create_study(
        directions=["minimize", "maximize"],
        pruner=module.MultiMetricPruner(
            optuna.pruners.SuccessiveHalvingPruner(min_resource=20),
            metric_directions={"cer": "minimize", "iou": "maximize"},
            joint=True,
        ),
    )
    try:
        for k in range(2):
            trial = module.MultiMetricPrunerTrial(study.ask())
            trial.report({"cer": 0.5 + k / 10, "iou": 0.5 - k / 10}, 20)
            trial.should_prune()
            study.tell(trial._trial, [0.5, 0.5])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def syne_space(space: Any) -> dict[str, Any]:
    """The demo's search space in Syne Tune's terms (its domains sample the same ranges)."""
    import syne_tune.config_space as sc

    from vlsweep.spaces import FloatRange, IntRange

    out: dict[str, Any] = dict(space.fixed)
    for name, entry in space.searched.items():
        if isinstance(entry, FloatRange):
            out[name] = (sc.loguniform if entry.log else sc.uniform)(entry.low, entry.high)
        elif isinstance(entry, IntRange):
            out[name] = (sc.lograndint if entry.log else sc.randint)(entry.low, entry.high)
        else:
            out[name] = sc.choice(list(entry.choices))
    return out


def ranked_priority() -> Any:
    """Syne Tune's non-dominated priority as its contract states it: one priority per item.

    ``MOPriority.__call__`` is documented to return, per sample, a priority (lower picked
    first), and MOASHA's rungs read the last entry as the new trial's. Syne Tune 0.16's
    ``NonDominatedPriority`` returns ``nondominated_sort``'s order instead (the indices of
    the items, best first), so MOASHA judges a new trial by the index of whichever trial
    sorts last: ``nondominated_sort([[.9, .9], [.1, .1], [.5, .5], [.2, .8]])`` is
    ``[1, 3, 2, 0]``, and the new trial (index 3, second best) gets the priority 0 of
    the worst. This subclass turns the order into each item's place in it.
    """
    from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority

    class Ranked(NonDominatedPriority):
        def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
            order = np.asarray(super().priority_unsafe(objectives))
            ranks = np.empty(len(order))
            ranks[order] = np.arange(len(order))
            return ranks

    return Ranked()


class SyneTuneMethod(Method):
    """Syne Tune's MOASHA through its scheduler API, minimizing (cer, 1 - iou); with
    ``ranked``, given ``ranked_priority()`` instead of its default priority."""

    def __init__(self, space: Any, seed: int, grace: int, eta: int, ranked: bool = False):
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

        np.random.seed(seed)  # Syne Tune's domains sample from numpy's global generator
        self.scheduler = MOASHA(
            config_space=syne_space(space),
            metrics=["cer", "iou_loss"],
            do_minimize=True,
            time_attr="steps",
            max_t=MAX_T,
            grace_period=grace,
            reduction_factor=eta,
            random_seed=seed,
            multiobjective_priority=ranked_priority() if ranked else None,
        )
        self.next_id = 0

    def propose(self) -> tuple[Any, dict[str, Any]]:
        import datetime

        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        trial = Trial(trial_id=self.next_id, config=suggestion.config, creation_time=datetime.datetime.now())
        self.next_id += 1
        self.scheduler.on_trial_add(trial)
        return trial, suggestion.config

    @staticmethod
    def _result(steps: int, point: Point) -> dict[str, float]:
        return {"steps": steps, "cer": point[0], "iou_loss": 1.0 - point[1]}

    def result(self, trial: Any, steps: int, point: Point, measured: dict[str, float]) -> bool:
        if self.scheduler.on_trial_result(trial, self._result(steps, point)) != "STOP":
            return False
        self.scheduler.on_trial_remove(trial)
        return True

    def finish(self, trial: Any, point: Point | None) -> None:
        if point is None:
            self.scheduler.on_trial_remove(trial)
        else:
            self.scheduler.on_trial_complete(trial, self._result(MAX_T, point))


def make_method(
    name: str, space: Any, settings: dict, seed: int, rungs: list[int], eta: int, hub: Any
) -> Method:
    from vlsweep.search.sampling import make_sampler
    from vlsweep.search.schedulers import MOASHAScheduler
    from vlsweep.search.schedulers import rungs as milestones

    def moasha() -> MOASHAScheduler:
        return MOASHAScheduler(
            metrics=["cer", "iou"],
            modes=["min", "max"],
            max_t=MAX_T,
            grace_period=rungs[0],
            reduction_factor=eta,
        )

    if name == "tpe-full":
        return OptunaMethod(make_sampler("tpe", seed), space, settings)
    if name == "mo-asha-random":
        return OptunaMethod(make_sampler("random", seed), space, settings, moasha())
    if name == "mo-asha-tpe":
        return OptunaMethod(make_sampler("tpe", seed), space, settings, moasha())
    if name == "mo-asha-rung-tpe":
        return OptunaMethod(make_sampler("tpe", seed, rungs=rungs), space, settings, moasha(), rungs)
    if name == "mo-asha-losses":
        # A candidate, not a sweep option: rungs ranked by each task's validation loss,
        # from 10% of the steps, where the losses already rank configs as the final
        # objectives do (docs/benchmarks.md's early-signal table) and IoU does not.
        loss_rungs = milestones(LOSS_GRACE, eta, MAX_T)
        sched = MOASHAScheduler(
            metrics=LOSSES, modes=["min", "min"], max_t=MAX_T, grace_period=LOSS_GRACE, reduction_factor=eta
        )
        return OptunaMethod(make_sampler("tpe", seed, rungs=loss_rungs), space, settings, sched, loss_rungs)
    if name == "optunahub-multimetric":
        return OptunaHubMethod(hub, make_sampler("tpe", seed), space, settings, rungs, eta)
    if name in ("syne-tune-moasha", "syne-tune-moasha-ranked"):
        return SyneTuneMethod(space, seed, rungs[0], eta, ranked=name.endswith("ranked"))
    raise ValueError(name)


# -- Ray Tune's ASHA, under real Ray Tune ---------------------------------------------------


def _replay_trainable(config: dict[str, Any], table: Table, pace: float) -> None:
    """A Ray Tune trainable that reports the nearest recorded config's curve."""
    from ray import tune

    row, done = table.nearest(config), 0
    for point in row["curve"]:
        time.sleep(pace * (point["steps"] - done))
        done = point["steps"]
        tune.report(
            {
                "steps": done,
                "cer": point["cer"],
                "iou": point["iou"],
                "score": (1 - point["cer"]) * point["iou"],
            }
        )
    if done < MAX_T:  # the config diverged before its next evaluation: those steps were spent
        evals = sorted({p["steps"] for r in table.rows for p in r["curve"]})
        failed_at = next(s for s in evals if s > done)
        time.sleep(pace * (failed_at - done))
        tune.report({"steps": failed_at, "diverged": True})


def ray_asha(
    table: Table, space: Any, seed: int, budget: int, workers: int, rungs: list[int], eta: int, pace: float
):
    """One sweep of Ray's ASHA on (1 - cer) * iou with Ray's random search; returns the
    same history as ``replay``, counted from the results the driver received."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from vlsweep.spaces import FloatRange, IntRange

    param_space: dict[str, Any] = dict(space.fixed)
    for name, entry in space.searched.items():
        if isinstance(entry, FloatRange):
            param_space[name] = (tune.loguniform if entry.log else tune.uniform)(entry.low, entry.high)
        elif isinstance(entry, IntRange):
            param_space[name] = (tune.lograndint if entry.log else tune.randint)(entry.low, entry.high + 1)
        else:
            param_space[name] = tune.choice(list(entry.choices))

    class Count(tune.Callback):
        def __init__(self) -> None:
            self.spent, self.last, self.front = 0, {}, []
            self.history: list[tuple[int, float]] = [(0, 0.0)]
            self.started = 0

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started += 1

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            steps = int(result["steps"])
            self.spent += steps - self.last.get(trial.trial_id, 0)
            self.last[trial.trial_id] = steps
            if steps >= MAX_T and "cer" in result and self.spent <= budget:
                self.front.append((result["cer"], result["iou"]))
                self.history.append((self.spent, hypervolume(self.front)))

    count = Count()

    class Budget(tune.stopper.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return count.spent >= budget

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_replay_trainable, table=table, pace=pace), {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=workers),
            scheduler=ASHAScheduler(
                time_attr="steps",
                metric="score",
                mode="max",
                max_t=MAX_T,
                grace_period=rungs[0],
                reduction_factor=eta,
            ),
            num_samples=100_000,
            max_concurrent_trials=workers,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"ray-asha-{seed}", stop=Budget(), callbacks=[count], verbose=0, storage_path=_ray_storage()
        ),
    )
    tuner.fit()
    return count.history, count.started


def _ray_storage() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="vlsweep-mf-replay-")


def start_ray(workers: int) -> None:
    """A local Ray as a sweep starts its own: token auth on, loopback only."""
    from vlsweep.search import ray_security

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray_security.start_local_ray(num_cpus=workers, log=lambda _m: None)


# -- figures ----------------------------------------------------------------------------------


def hv_at(history: list[tuple[int, float]], steps: float) -> float:
    return max((hv for s, hv in history if s <= steps), default=0.0)


def steps_to(history: list[tuple[int, float]], target: float, budget: float = math.inf) -> float:
    """Steps spent when the hypervolume first reached ``target``; infinite if not within ``budget``."""
    return next((s for s, hv in history if hv >= target and s <= budget), math.inf)


def summarize(runs: dict[str, list[tuple[list, int]]], budget: int) -> dict[str, Any]:
    """The headline figures of every method (see the module docstring)."""
    if "tpe-full" not in runs:
        raise SystemExit("error: --methods: the figures are relative to tpe-full; include it")
    tpe_final = [hv_at(h, budget) for h, _ in runs["tpe-full"]]
    budgets = [budget * (k + 1) / BUDGETS for k in range(BUDGETS)]
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        to95 = [
            steps_to(h, 0.95 * final, budget) / budget for (h, _), final in zip(seeds, tpe_final, strict=True)
        ]
        median = statistics.median(to95)
        out[name] = {
            "steps_to_95pct": None if math.isinf(median) else round(median, 4),
            "steps_to_95pct_per_seed": [None if math.isinf(x) else round(x, 4) for x in to95],
            "median_hv": [round(statistics.median(hv_at(h, b) for h, _ in seeds), 4) for b in budgets],
            # The spread over seeds at each budget (quartiles), to weigh a difference of medians.
            "hv_quartiles": [
                [round(float(q), 4) for q in np.percentile([hv_at(h, b) for h, _ in seeds], [25, 75])]
                for b in budgets
            ],
            "final_hv_median": round(statistics.median(hv_at(h, budget) for h, _ in seeds), 4),
            "trials_started_median": statistics.median(n for _, n in seeds),
        }
    return out


def verdict(methods: dict[str, Any]) -> dict[str, Any]:
    """The issue's bar: MO-ASHA with its better proposer within 33% of the steps, and at
    least every peer's median hypervolume at each of the 20 budgets."""
    ours = [m for m in OURS if m in methods]
    if not ours:
        return {}
    # The better proposer: the larger median hypervolume over the budgets (area under the
    # curve), then the fewer steps to 95%.
    best = max(
        ours,
        key=lambda m: (
            statistics.fmean(methods[m]["median_hv"]),
            -(methods[m]["steps_to_95pct"] if methods[m]["steps_to_95pct"] is not None else math.inf),
        ),
    )
    below = {
        peer: [
            k + 1
            for k, (a, b) in enumerate(
                zip(methods[best]["median_hv"], methods[peer]["median_hv"], strict=True)
            )
            if a < b
        ]
        for peer in PEERS
        if peer in methods
    }
    s95 = methods[best]["steps_to_95pct"]
    ours = methods[best]
    return {
        "mo_asha": best,
        "within_33pct": s95 is not None and s95 <= 0.33,
        "budgets_below_peer": {p: ks for p, ks in below.items() if ks},
        "at_least_every_peer": not any(below.values()),
        # How far below, against how much the median moves between seeds there.
        "largest_shortfall": {
            p: round(max(methods[p]["median_hv"][k - 1] - ours["median_hv"][k - 1] for k in ks), 4)
            for p, ks in below.items()
            if ks
        },
        "median_iqr": round(
            statistics.median(q75 - q25 for q25, q75 in ours.get("hv_quartiles", [[0, 0]])), 4
        ),
    }


def table_md(summary: dict[str, Any]) -> str:
    """The docs' table (``benchmarks/doc_tables.py``)."""
    methods = summary["methods"]
    cols = (4, 7, 10, 20)  # of the 20 budgets: 20%, 35%, 50%, 100%
    lines = [
        f"{summary['configs']} recorded configs; budget {summary['budget_steps']} steps "
        f"(= {summary['budget_trials']} full-budget trials); {summary['workers']} workers; "
        f"{summary['seeds']} seeds; rungs {summary['rungs']} (eta {summary['eta']}); medians over seeds\n",
        "| method | trials started | HV at 20% of steps | at 35% | at 50% | at 100% "
        "| steps to 95% of TPE's final HV |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        s95 = "never (median)" if m["steps_to_95pct"] is None else f"{m['steps_to_95pct']:.0%}"
        cells = [f"{m['trials_started_median']:.0f}", *(f"{m['median_hv'][c - 1]:.4f}" for c in cols), s95]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    v = summary["verdict"]
    if not v:
        return "\n".join(lines) + "\n"
    below = (
        "; ".join(
            f"{p} at budgets {ks} (by up to {v['largest_shortfall'][p]:.4f})"
            for p, ks in v["budgets_below_peer"].items()
        )
        or "none"
    )
    lines.append(
        f"\nMO-ASHA's better proposer: {v['mo_asha']}; within 33% of the steps: {v['within_33pct']}; "
        f"median HV at least every peer's at all {BUDGETS} budgets: {v['at_least_every_peer']} "
        f"(below a peer: {below}); the median spread between seeds (interquartile range of "
        f"{v['mo_asha']}'s hypervolume over the {BUDGETS} budgets) is {v['median_iqr']:.4f}."
    )
    if summary.get("left_out"):
        lines.append(f"Left out: {summary['left_out']}.")
    return "\n".join(lines) + "\n"


def doc_table(summary: dict[str, Any]) -> str:
    return table_md(summary)


def plot(runs: dict[str, list[tuple[list, int]]], budget: int, path: Path) -> None:
    import plotly.graph_objects as go

    from vlsweep.report import write_png

    xs = np.geomspace(0.02 * budget, budget, 120)  # log scale: the methods part in the first fifth
    fig = go.Figure()
    for name, seeds in runs.items():
        fig.add_trace(
            go.Scatter(
                x=xs / budget,
                y=[statistics.median(hv_at(h, x) for h, _ in seeds) for x in xs],
                name=name,
                mode="lines",
                line={"shape": "hv", "dash": "dash" if name in PEERS else "solid"},
            )
        )
    fig.update_layout(
        title="Hypervolume of the full-budget front against training steps (median over seeds)",
        xaxis_title="training steps spent, as a share of full-budget TPE's (log scale)",
        xaxis_type="log",
        xaxis_tickformat=".0%",
        xaxis_tickvals=[0.02, 0.05, 0.1, 0.2, 0.33, 0.5, 1.0],
        yaxis_title="hypervolume (ref cer=1, iou=0)",
        yaxis_range=[0.6, 0.96],
        template="plotly_white",
        height=460,
    )
    write_png(fig, path, width=1000, height=460)
    print(f"wrote {path}")


def load_hub(registry: Path | None) -> tuple[Any, str | None]:
    """OptunaHub's multi_metric_pruner from a local registry copy, or why it is left out."""
    if registry is None:
        return (
            None,
            "optunahub-multimetric (no --optunahub-registry: OptunaHub's registry is not reachable here)",
        )
    import optunahub

    package = registry / "package" / "pruners" / "multi_metric_pruner"
    if not package.is_dir():
        raise SystemExit(
            f"error: --optunahub-registry {registry}: no package/pruners/multi_metric_pruner in it; "
            "give a checkout of github.com/optuna/optunahub-registry"
        )
    return optunahub.load_local_module(
        "pruners/multi_metric_pruner", registry_root=str(registry / "package")
    ), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-trials", type=int, default=48, help="budget = this many full-budget trials")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--grace", type=int, default=None, help="first rung, in steps (default: the sweep's default)"
    )
    ap.add_argument("--eta", type=int, default=3, help="reduction factor")
    ap.add_argument(
        "--optunahub-registry", type=Path, default=None, help="a local optunahub-registry checkout"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--pace", type=float, default=0.001, help="seconds of sleep per replayed step under Ray")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--png", type=Path, default=None, help="write the plot here")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 12 trials of budget (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.budget_trials = 2, 12

    import optuna

    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.schedulers import rung_steps, rungs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    cfg, _ = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    space, settings = cfg.search_space, cfg.settings()
    if args.grace is None:
        cfg.search.early_stopping, cfg.search.reduction_factor = "mo-asha", args.eta
        milestones = rung_steps(cfg)
    else:
        milestones = rungs(args.grace, args.eta, MAX_T)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    evals = {p["steps"] for r in rows for p in r["curve"]}
    if not set(milestones) <= evals:
        raise SystemExit(
            f"error: rungs {milestones} are not all evaluation steps of {args.data}; pass --grace"
        )
    table = Table(rows, space)
    budget = args.budget_trials * MAX_T
    hub, left_out = (None, None)
    if "optunahub-multimetric" in args.methods:
        hub, left_out = load_hub(args.optunahub_registry)
    methods = [m for m in args.methods if m != "optunahub-multimetric" or hub is not None]

    runs: dict[str, list[tuple[list, int]]] = {}
    for name in methods:
        t0 = time.perf_counter()
        if name == "ray-asha-scalarized":
            start_ray(args.workers)
            runs[name] = [
                ray_asha(table, space, s, budget, args.workers, milestones, args.eta, args.pace)
                for s in range(args.seeds)
            ]
        else:
            runs[name] = [
                replay(
                    make_method(name, space, settings, s, milestones, args.eta, hub),
                    table,
                    budget,
                    args.workers,
                )
                for s in range(args.seeds)
            ]
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s", flush=True)

    figures = summarize(runs, budget)
    summary = {
        "data": str(args.data),
        "configs": len(rows),
        "seeds": args.seeds,
        "budget_trials": args.budget_trials,
        "budget_steps": budget,
        "workers": args.workers,
        "rungs": milestones,
        "eta": args.eta,
        "budgets": [round((k + 1) / BUDGETS, 3) for k in range(BUDGETS)],
        "optuna": optuna.__version__,
        "left_out": left_out,
        "optunahub_with_successive_halving": None if hub is None else (sha_error(hub) or "runs"),
        "methods": figures,
    }
    summary["verdict"] = verdict(figures)
    print()
    print(table_md(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        plot(runs, budget, args.png)


if __name__ == "__main__":
    main()
