"""Every method the replay compares, by name: vlsweep's own (an Optuna study asked and told
as vlsweep's searcher does, with vlsweep's MO-ASHA stopping trials) and its peers
(``peers``)."""

from __future__ import annotations

from typing import Any

from mf_replay.peers import OptunaHubMethod, SyneTuneMethod
from mf_replay.simulator import Method
from mf_replay.table import MAX_T, Point

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
