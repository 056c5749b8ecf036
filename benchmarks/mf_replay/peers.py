"""The peers vlsweep's MO-ASHA is measured against: OptunaHub's MultiMetricPruner (from a
local copy of its registry), Syne Tune's MOASHA driven through its scheduler API, and Ray
Tune's ASHA under real Ray Tune, replaying the curves."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mf_replay.simulator import Method, hypervolume
from mf_replay.table import MAX_T, Point, Table


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


class OptunaHubMethod(Method):
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
        self.module, self.space, self.settings, self.rungs = module, space, settings, list(rungs)

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
        from optuna.trial import TrialState

        if point is None:
            self.study.tell(trial._trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial._trial, list(point))


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
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from vlsweep.spaces import FloatRange, IntRange

    # Ray's workers cannot import this package (benchmarks/ is on no path of theirs): the
    # trainable and the table it replays travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__package__])

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
