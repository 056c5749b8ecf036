"""A Ray Tune ``Searcher`` on Optuna's ask/tell API, written for multi-objective sweeps.

Ray's stock ``OptunaSearch`` is not used: with Ray 2.60 and Optuna 5.1 (pyproject's floors), a NaN or missing
metric leaves its Optuna trial RUNNING forever, a trial a scheduler stopped is told
COMPLETE with truncated metrics (and lands on the front), it is single-objective for
known points, a restore after a killed driver loses and duplicates trials, and its
pickled storage carries the database URL, password included. This one:

- asks one Optuna trial per Ray trial and records ``ray_trial_id`` on it, in the
  database, before the Ray trial starts;
- tells COMPLETE only for a full-budget result whose objectives are all finite; a NaN,
  inf, missing metric or an error the trial reported is FAIL with the reason in the
  ``error`` user attr; a trial a scheduler stopped early is PRUNED with ``steps``;
- never leaves a trial RUNNING: ``close()`` fails whatever is still open when the
  sweep ends, and a Ray worker failure is finished by ``fail()`` with Ray's message;
- holds no storage URL: pickling it (as Tune's experiment checkpoints do) drops the
  study, and the state that matters lives in the study database.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from vlsweep import artifacts, outcomes
from vlsweep.metrics import METRICS
from vlsweep.search.sampling import RUNG_ATTR, reproducible_slot
from vlsweep.search.worker import DIED_KEY, ERROR_KEY, RESUMED_KEY, artifacts_key
from vlsweep.spaces import Space

_log = logging.getLogger("vlsweep")

# Where the trial ran (node id, worker process; a multi-worker trial's world size and
# each rank's place), recorded as reported.
# The Optuna trial's user attr naming the Ray Tune experiment (the sweep's run) it ran in.
EXPERIMENT_ATTR = "ray_experiment"
_PLACEMENT_KEYS = ("node_id", "worker_pid", "gpu_ids", "train_started", "world_size", "rank_placement")


class OptunaAskTellSearcher(Searcher):
    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        settings: dict[str, Any],
        objectives: list[str],
        budget_steps: int,
        constraints: list[tuple[str, str, float]] | None = None,
        run_id: str = "",
        fail_fast: int = 0,
        reproducible_window: int | None = None,
        artifact_store: Any | None = None,
        keep_last: int | None = None,
        rungs: list[int] | None = None,
    ):
        super().__init__(metric=None, mode=None)
        self.study = study
        self.space = space
        self.settings = settings
        self.objectives = objectives
        self.budget_steps = budget_steps
        self.constraints = constraints or []
        self.run_id = run_id
        self._live: dict[str, optuna.Trial] = {}
        self._steps: dict[str, int] = {}
        self._reported_error: dict[str, str] = {}
        # Why a multi-worker trial's rank died, as its trial said before Tune saw it fail.
        self._died: dict[str, str] = {}
        self._awaiting_error: dict[str, optuna.Trial] = {}
        self._placement: dict[str, dict[str, Any]] = {}
        # The Ray Tune experiment's name (the sweep sets it): with the trial, what names the
        # files a trial stores (worker.artifacts_key).
        self.experiment = ""
        self.unfinished: list[str] = []  # Ray trial ids close() finished before they did
        # Fail fast: the errors of the first ``fail_fast`` trials this run finished, while
        # every one of them failed; ``abort_reason`` is set once they all failed alike.
        self.fail_fast = fail_fast
        self._first_errors: list[str] | None = [] if fail_fast > 0 else None
        self.abort_reason: str | None = None
        # Reproducible sweeps (search.reproducible): trial k is asked for only once every
        # trial ``window`` or more numbers before it has ended (see sampling.OneReadPerAsk).
        self.window = reproducible_window
        self._held = False  # the last suggest() waited; re-read the study only after a trial ends
        self.holding: list[int] = []  # the trials that wait holds for, for the progress line
        # Each finished trial's files, written to this store by its worker (vlsweep.artifacts).
        self.artifact_store = artifact_store
        self.keep_last = keep_last
        # Whether the study has any stored files (None: not looked yet). Retention reads
        # every trial; with no files there is nothing to remove, and the read is a tenth
        # of the driver's time per trial when trials are short (benchmarks/trial_overhead.py).
        self._has_files: bool | None = None
        # Early stopping's rungs: each trial's objectives there go to its RUNG_ATTR, so the
        # sampler learns from trials stopped early (study.at_highest_rung).
        self.rungs = sorted(rungs or [])
        self._at_rungs: dict[str, dict[str, list[float]]] = {}

    # -- Tune's hooks ----------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.window and self._held:
            return None  # nothing ended since the last look
        if self.window:
            _, unfinished = reproducible_slot(self.study.get_trials(deepcopy=False), self.window)
            self._held = bool(unfinished)
            self.holding = unfinished
            if unfinished:
                return None  # Tune asks again later
        trial = self.study.ask()
        values = self.space.suggest(trial, self.settings)
        trial.set_user_attr("ray_trial_id", trial_id)
        if self.run_id:
            trial.set_user_attr("vlsweep_run", self.run_id)
        if self.experiment:  # with the Ray trial id, what names its stored files and checkpoints
            trial.set_user_attr(EXPERIMENT_ATTR, self.experiment)
        self._live[trial_id] = trial
        return {"params": values, "optuna_trial": trial.number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if "steps" in result and result["steps"] is not None:
            self._steps[trial_id] = int(result["steps"])
            if int(result["steps"]) in self.rungs:
                self._record_rung(trial_id, int(result["steps"]), result)
        if result.get(ERROR_KEY):
            self._reported_error[trial_id] = str(result[ERROR_KEY])
        if result.get(DIED_KEY):
            self._died[trial_id] = str(result[DIED_KEY])
        trial = self._live.get(trial_id)
        if trial is not None and result.get(RESUMED_KEY):
            trial.set_user_attr("resumed_from_step", int(result[RESUMED_KEY]))
        if trial is not None:
            # Written when first seen or changed (a multi-worker trial's ranks come after its
            # own place; a trial run again after a lost node runs elsewhere).
            known = self._placement.setdefault(trial_id, {})
            for key in _PLACEMENT_KEYS:
                value = result.get(key)
                if value is not None and known.get(key) != value:
                    known[key] = value
                    # A multi-worker trial's ranks (rank, node, pid, GPUs each) travel as JSON.
                    trial.set_user_attr(key, json.loads(value) if key == "rank_placement" else value)

    def _record_rung(self, trial_id: str, steps: int, result: dict[str, Any]) -> None:
        trial = self._live.get(trial_id)
        values = [result.get(name) for name in self.objectives]
        if trial is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return
        measured = self._at_rungs.setdefault(trial_id, {})
        measured[str(steps)] = [float(v) for v in values]  # type: ignore[arg-type]
        trial.set_user_attr(RUNG_ATTR, measured)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._held, self.holding = False, []
        if result and not error and result.get("steps") in self.rungs:
            # A trial stopped at a rung: Tune hands its last result here, not to on_trial_result.
            self._record_rung(trial_id, int(result["steps"]), result)
        self._at_rungs.pop(trial_id, None)
        trial = self._live.pop(trial_id, None)
        if trial is None:
            return
        if error:
            # Ray's error message reaches us through fail(), called by the sweep's
            # callback right after this hook; close() covers the case it never comes.
            self._awaiting_error[trial_id] = trial
            return
        self._finish(trial_id, trial, result)

    def note(self, trial_id: str, key: str, value: Any) -> None:
        """Record a user attr on the running trial (e.g. where its logs are), or on one Tune
        has just given up on, whose failure is being recorded."""
        trial = self._live.get(trial_id) or self._awaiting_error.get(trial_id)
        if trial is not None:
            trial.set_user_attr(key, value)

    def fail(self, trial_id: str, message: str) -> None:
        """Finish a trial whose Ray worker failed (after Ray's own retries). A multi-worker
        trial said which rank died before it failed: that reason is the message's."""
        self._held, self.holding = False, []
        trial = self._awaiting_error.pop(trial_id, None) or self._live.pop(trial_id, None)
        died = self._died.pop(trial_id, None)
        if trial is not None:
            self._remove_unlinked(trial_id, trial)
            self._tell_fail(trial_id, trial, f"the Ray worker failed: {died}" if died else message)

    def _remove_unlinked(self, trial_id: str, trial: optuna.Trial) -> None:
        """What a trial that never finished may have begun to store is removed (its files
        are linked only when it finishes, so none of them is)."""
        if self.artifact_store is None or not self.experiment:
            return
        key = artifacts_key(self.experiment, trial_id, trial.number)
        try:
            artifacts.remove_unlinked(self.artifact_store, key)
        except Exception as err:  # the store unreachable now: the sweep goes on
            _log.warning("could not remove trial %d's unfinished files from the store: %s", trial.number, err)

    def recovering(self, trial_id: str) -> None:
        """Tune runs the trial again: a rank death it reported is the last attempt's, and
        where it ran is recorded anew from its next report."""
        self._died.pop(trial_id, None)
        self._placement.pop(trial_id, None)

    def nodes(self, trial_id: str) -> set[str]:
        """The Ray nodes the trial's attempt ran on (its own worker's, and its ranks')."""
        placement = self._placement.get(trial_id, {})
        nodes = {placement["node_id"]} if placement.get("node_id") else set()
        ranks = placement.get("rank_placement")
        if ranks:
            nodes |= {r["node_id"] for r in (json.loads(ranks) if isinstance(ranks, str) else ranks)}
        return nodes

    def closed(self, trial_id: str) -> bool:
        """Whether the Optuna trial of this Ray trial is finished (told, or failed by the
        driver while Tune still runs it)."""
        return trial_id not in self._live and trial_id not in self._awaiting_error

    def open_trials(self) -> list[int]:
        """Numbers of the Optuna trials Ray started and never finished."""
        return [t.number for t in self._live.values()]

    def close(
        self, reason: str = "the sweep stopped before this trial finished", requeue: bool = True
    ) -> list[int]:
        """Finish every trial still open, so nothing stays RUNNING; returns the re-queued ones.

        A trial that never finished (Ctrl-C, the driver stopping) is FAIL with ``reason``;
        with ``requeue`` it is queued again with the same parameters, so ``vlsweep resume``
        runs it, and like a trial lost with a killed driver it does not count toward the
        trial budget.
        """
        requeued = []
        self._first_errors = None  # these trials did not fail on their own
        self.unfinished += list(self._live) + list(self._awaiting_error)
        for trial_id, trial in list(self._live.items()):
            if requeue:
                # A carried point stays one on its re-run (status shows it, not this run).
                carried = trial.user_attrs.get(outcomes.CARRIED_ATTR)
                kept = {outcomes.CARRIED_ATTR: carried} if carried is not None else {}
                self.study.enqueue_trial(
                    trial.params, user_attrs={"retry_of": trial.number, **kept}, skip_if_exists=False
                )
                trial.set_user_attr("requeued", True)
                requeued.append(trial.number)
            self._remove_unlinked(trial_id, trial)
            self._tell_fail(trial_id, trial, f"{reason}; re-queued" if requeue else reason)
        for trial_id, trial in list(self._awaiting_error.items()):
            self._remove_unlinked(trial_id, trial)
            self._tell_fail(trial_id, trial, "the Ray worker failed (no message was recorded)")
        self._live.clear()
        self._awaiting_error.clear()
        return requeued

    # State lives in the study database; Tune's experiment checkpoint gets nothing else.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            f.write("vlsweep: searcher state lives in the Optuna study database\n")

    def restore(self, checkpoint_path: str) -> None:
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "budget_steps": self.budget_steps,
            "study_name": getattr(self.study, "study_name", None),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.study = None  # type: ignore[assignment]
        self._live, self._steps, self._reported_error, self._awaiting_error = {}, {}, {}, {}
        self._placement, self._died, self.unfinished = {}, {}, []
        self._first_errors, self.abort_reason = None, None
        self.window, self._held, self.holding = None, False, []
        self.artifact_store, self.keep_last, self._has_files = None, None, None
        self.rungs, self._at_rungs = [], {}

    # -- telling Optuna --------------------------------------------------------------------

    def _finish(self, trial_id: str, trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        self._placement.pop(trial_id, None)
        # Whatever the verdict, the files the worker stored are linked (so retention sees them).
        self._link_files(trial, result or {})
        if self.abort_reason is not None:
            # Stopped because the sweep is aborting: not a scheduler's verdict on the trial.
            self._tell_fail(trial_id, trial, f"stopped: {self.abort_reason}", self._steps.get(trial_id))
            return
        steps = self._steps.pop(trial_id, None)
        error = self._reported_error.pop(trial_id, None) or (result or {}).get(ERROR_KEY)
        if error:
            # What a failed trial spent counts too, in what the sweep's compute adds up to.
            spent = (result or {}).get("cpu_seconds")
            if isinstance(spent, (int, float)) and math.isfinite(spent):
                trial.set_user_attr("cpu_seconds", float(spent))
            self._tell_fail(trial_id, trial, str(error), steps)
            return
        if not result:
            self._tell_fail(trial_id, trial, "the trial ended without reporting any result", steps)
            return
        steps = int(result.get("steps") or steps or 0)
        trial.set_user_attr("steps", steps)
        # The table's metrics other than the study's two values, as user attrs.
        for key in (k for k, m in METRICS.items() if m.attr):
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                trial.set_user_attr(key, float(value))
        if steps < self.budget_steps:
            # Stopped early by a scheduler: never a COMPLETE point on the front.
            self.study.tell(trial, state=TrialState.PRUNED)
            self._first_errors = None
            return
        values = []
        for name in self.objectives:
            value = result.get(name)
            if value is None:
                self._tell_fail(trial_id, trial, f"metric {name!r} is missing from the final result", steps)
                return
            try:
                value = float(value)
            except (TypeError, ValueError):
                self._tell_fail(trial_id, trial, f"metric {name!r} is not a number: {value!r}", steps)
                return
            if not math.isfinite(value):
                self._tell_fail(trial_id, trial, f"metric {name!r} is {value}", steps)
                return
            values.append(value)
        for metric, op, bound in self.constraints:
            value = result.get(metric)
            if value is None or not math.isfinite(float(value)):
                self._tell_fail(
                    trial_id, trial, f"constraint metric {metric!r} is missing or not finite", steps
                )
                return
            # Optuna: feasible when every constraint value is <= 0.
            trial.set_constraint(
                f"{metric} {op} {bound:g}", float(value) - bound if op == "<=" else bound - float(value)
            )
        self.study.tell(trial, values)
        self._first_errors = None  # a trial succeeded: the sweep works
        if self.artifact_store is not None and self._files_stored():
            try:
                artifacts.prune(self.study, self.artifact_store, self.keep_last)
            except Exception as exc:  # retention must never cost a sweep its trials
                _log.warning("artifact retention failed (files are kept): %s", exc)

    def _files_stored(self) -> bool:
        if self._has_files is None:
            self._has_files = artifacts.any_linked(self.study.get_trials(deepcopy=False))
        return self._has_files

    def _link_files(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        """Link the files the worker stored to the Optuna trial (or say why there are none)."""
        if result.get(artifacts.ERROR_KEY):
            trial.set_user_attr("artifacts_error", str(result[artifacts.ERROR_KEY]))
        metas = result.get(artifacts.RESULT_KEY)
        if metas and self.artifact_store is not None:
            artifacts.link(self.study._storage, trial._trial_id, json.loads(metas))
            self._has_files = True

    def _tell_fail(self, trial_id: str, trial: optuna.Trial, message: str, steps: int | None = None) -> None:
        self._steps.pop(trial_id, None)
        self._reported_error.pop(trial_id, None)
        self._died.pop(trial_id, None)
        self._placement.pop(trial_id, None)
        self._at_rungs.pop(trial_id, None)
        trial.set_user_attr("error", message[-2000:])
        if steps is not None:
            trial.set_user_attr("steps", steps)
        self.study.tell(trial, state=TrialState.FAIL)
        self._watch_failures(message)

    def _watch_failures(self, message: str) -> None:
        """Abort when the first ``fail_fast`` trials to finish all failed with the same error:
        a broken model path, dataset or GPU setup would otherwise burn the whole budget."""
        if self._first_errors is None or self.abort_reason is not None or message.startswith("stopped:"):
            return
        self._first_errors.append(message)
        if len(self._first_errors) < self.fail_fast:
            return
        if len({_error_kind(m) for m in self._first_errors}) == 1:
            self.abort_reason = (
                f"the first {self.fail_fast} trials all failed with the same error: {message.strip()[-500:]}"
            )
        self._first_errors = None


def _error_kind(message: str) -> str:
    """An error with its numbers blanked: OOMs of different sizes are the same failure."""
    return re.sub(r"\d+(\.\d+)?", "#", message.strip().splitlines()[0] if message.strip() else "")
