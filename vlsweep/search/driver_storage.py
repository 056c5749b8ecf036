"""The sweep driver's side of the study database: creating (or re-opening, objectives
checked) the study, and the driver's storage, which keeps the trials it runs in memory.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep.errors import UserInputError
from vlsweep.storages import is_transient


def create_or_check(
    storage: optuna.storages.BaseStorage,
    name: str,
    directions: Sequence[Literal["minimize", "maximize"]],
    metric_names: list[str],
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Create the study, or re-open it after checking directions and objective names match."""
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        have_dirs = [d.name.lower() for d in study.directions]
        have_names = study.metric_names
        if have_dirs != list(directions) or (have_names is not None and list(have_names) != metric_names):
            raise UserInputError(
                f"study {name!r} exists with objectives {have_names} {have_dirs}, but this config asks "
                f"for {metric_names} {directions}; use another `name`, or the same objectives"
            )
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler)
    with warnings.catch_warnings():  # stable in practice since Optuna 3.2; the warning only alarms users
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names)
    return study


class DriverStorage(optuna.storages.RDBStorage):
    """The sweep driver's storage: the trials it created and has not finished are served
    from memory, and their parameters are written in one transaction.

    Optuna caches finished trials, but reads a running trial back from the database
    whenever it is asked for, since in Optuna's distributed mode other processes write to
    it. In a sweep they do not: the driver alone asks, suggests, records and tells (its
    workers report through Ray, and a second driver is refused), so what it wrote is what
    the database holds. Each trial was read back five times (creating it, sampling,
    telling it, twice to list the running trials), about a third of the driver's time
    per trial when trials are short (benchmarks/trial_overhead.py). A trial leaves the
    memory copy when its state changes (popped from the queue, finished): the next read
    is from the database, so the timestamps Optuna sets there are the ones seen here.
    Trials other processes create in the study still arrive by the database.

    The parameters of such a trial are written together with its next write (one
    transaction instead of one per parameter); the searcher's next write, the Ray trial
    id, comes before the Ray trial starts. Every other write goes to the database at
    once. A parameter is checked when it is suggested, as Optuna does: the first use of a
    name in this process is written at once (the database checks it against the study),
    later ones are checked against that distribution here.

    Written here: Optuna's own cache (``_CachedStorage``) has no mode that trusts its
    writer, and it is private. It sits behind that cache, as Optuna's RDBStorage does
    (``storages.open_storage(url, kind=...)``), and overrides the RDBStorage methods the
    cache calls, which are private: ``kind()`` checks they are there, with the arguments
    they are passed, and else opens Optuna's own. What it earns was measured side by side
    (benchmarks/storage_cost.py, docs/benchmarks.md): it stays while it saves at least 1%
    of a sweep's wall time.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._mine: dict[int, tuple[int, FrozenTrial]] = {}  # trial id -> (study id, trial)
        self._held: dict[int, list[tuple[str, float, Any, Any]]] = {}  # parameters not yet written
        self._checked: dict[tuple[int, str], Any] = {}  # (study id, name) -> a distribution the database took

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            with self._lock:
                self._mine[trial._trial_id] = (study_id, copy.deepcopy(trial))
        return trial

    def _update(self, trial_id: int, change: Any) -> None:
        with self._lock:
            if trial_id in self._mine:
                change(self._mine[trial_id][1])

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: Any,
        previous_distribution: Any,
    ) -> None:
        with self._lock:
            study_id = self._mine[trial_id][0] if trial_id in self._mine else None
            checked = self._checked.get((study_id, param_name)) if study_id is not None else None
        if study_id is None or checked is None:
            # Not ours, or the first use of the name here: the database checks it.
            self.flush(trial_id)
            super()._set_trial_param(
                trial_id, param_name, param_value_internal, distribution, previous_distribution
            )
            with self._lock:
                if study_id is not None:
                    self._checked[(study_id, param_name)] = distribution
            self._update(trial_id, lambda t: _set_param(t, param_name, param_value_internal, distribution))
            return
        optuna.distributions.check_distribution_compatibility(checked, distribution)
        with self._lock:
            # Held with the trial and written with its next write, all in one transaction
            # (the searcher records the Ray trial id right after the parameters, before
            # the Ray trial starts).
            if trial_id in self._mine:
                _set_param(self._mine[trial_id][1], param_name, param_value_internal, distribution)
                self._held.setdefault(trial_id, []).append(
                    (param_name, param_value_internal, distribution, checked)
                )
                return
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, checked)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def flush(self, trial_id: int) -> None:
        """Write the parameters held for ``trial_id`` (one transaction). A lost database
        puts them back: ``storages.ResilientStorage`` retries the whole call, and this
        write with it. Any other error lets them go, so the trial can still be told."""
        with self._lock:
            held = self._held.pop(trial_id, [])
        if not held:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        try:
            with _create_scoped_session(self.scoped_session, True) as session:
                for name, internal, distribution, previous in held:
                    self._set_trial_param_without_commit(
                        session, trial_id, name, internal, distribution, previous
                    )
        except Exception as exc:
            if is_transient(exc):
                with self._lock:  # in front of any held since
                    self._held[trial_id] = held + self._held.get(trial_id, [])
            raise

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        self.flush(trial_id)
        with self._lock:
            self._mine.pop(trial_id, None)  # read back: the database sets its timestamps
        return super().set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.flush(trial_id)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._update(trial_id, lambda t: t.intermediate_values.__setitem__(step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.flush(trial_id)
        super().set_trial_user_attr(trial_id, key, value)
        # As the database gives it back (JSON: tuples become lists, keys strings).
        self._update(trial_id, lambda t: t.user_attrs.__setitem__(key, json.loads(json.dumps(value))))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.flush(trial_id)
        super().set_trial_system_attr(trial_id, key, value)
        self._update(trial_id, lambda t: t.system_attrs.__setitem__(key, json.loads(json.dumps(value))))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            if trial_id in self._mine:
                return copy.deepcopy(self._mine[trial_id][1])
        return super().get_trial(trial_id)

    def _get_trials(
        self,
        study_id: int,
        states: Any,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        with self._lock:
            mine = {i: copy.deepcopy(t) for i, (sid, t) in self._mine.items() if sid == study_id}
        if not mine:
            return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        # Read from the database what is not here: the other trials asked for, and any
        # created since (by id: ids are assigned in order across the whole database).
        newest = max(mine)
        if newest - trial_id_greater_than > 10_000:
            # Many other trials in between (another study's): read as usual, with this
            # process's copies of its own trials (their held parameters) over the rows.
            rows = super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)
            return [mine.get(t._trial_id, t) for t in rows]
        between = set(range(trial_id_greater_than + 1, newest)) - mine.keys()
        read = super()._get_trials(
            study_id,
            states,
            (set(included_trial_ids) | between) - mine.keys(),
            max(trial_id_greater_than, newest),
        )
        wanted = [t for i, t in mine.items() if i in included_trial_ids or i > trial_id_greater_than]
        return read + [t for t in wanted if states is None or t.state in states]


# The Optuna internals DriverStorage overrides or calls, with the arguments it passes
# (by position).
_INTERNALS = {
    "_create_new_trial": ["self", "study_id", "template_trial"],
    "_set_trial_param": [
        "self",
        "trial_id",
        "param_name",
        "param_value_internal",
        "distribution",
        "previous_distribution",
    ],
    "_set_trial_param_without_commit": [
        "self",
        "session",
        "trial_id",
        "param_name",
        "param_value_internal",
        "distribution",
        "previous_distribution",
    ],
    "_get_trials": ["self", "study_id", "states", "included_trial_ids", "trial_id_greater_than"],
}


def kind(log: Callable[[str], None]) -> type[optuna.storages.RDBStorage]:
    """``DriverStorage`` where this Optuna has the internals it relies on, as it relies on
    them; else Optuna's own RDBStorage, said once: the same sweep, with more database work
    per trial (docs/benchmarks.md), rather than a sweep that breaks on an Optuna upgrade."""
    from optuna.storages._rdb import storage as rdb

    changed = [
        name for name, params in _INTERNALS.items() if not _takes(getattr(rdb.RDBStorage, name, None), params)
    ]
    if not callable(getattr(rdb, "_create_scoped_session", None)):
        changed.append("_create_scoped_session")
    if changed:
        log(
            f"note: Optuna {optuna.__version__} changed what vlsweep's driver storage relies on "
            f"({', '.join(changed)}); using Optuna's own storage: the same sweep, with more "
            "database work per trial"
        )
        return optuna.storages.RDBStorage
    return DriverStorage


def _takes(method: Any, names: list[str]) -> bool:
    """Whether ``method`` takes exactly ``names``, each by position (as they are passed)."""
    if not callable(method):
        return False
    params = list(inspect.signature(method).parameters.values())
    return [p.name for p in params] == names and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)


def _set_param(trial: FrozenTrial, name: str, internal: float, distribution: Any) -> None:
    trial.params[name] = distribution.to_external_repr(internal)
    trial.distributions[name] = distribution
