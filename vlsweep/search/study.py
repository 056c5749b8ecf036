"""The Optuna study behind a sweep: storage, directions, names, attrs, the Pareto front.

The study database is the sweep's source of truth: the mapping from Ray trials to
Optuna trials, the sanitized config and the driver's heartbeat all live there, so a
killed sweep can be resumed from the database alone (no pickle needed).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep import pareto
from vlsweep.errors import UserInputError

_log = logging.getLogger("vlsweep")
DEFAULT_STORAGE = "sqlite:///vlsweep.db"
STORAGE_ENV = "VLSWEEP_STORAGE"
# A driver that has not written its heartbeat for this long is considered gone.
HEARTBEAT_STALE_SECONDS = 60.0


def storage_url(cli: str | None = None, config: str | None = None) -> str:
    """--storage, then the config's ``storage``, then $VLSWEEP_STORAGE, then the SQLite default."""
    return cli or config or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it
        return "<storage URL>"


def strip_password(url: str) -> str:
    """The URL without its password (libpq then reads PGPASSWORD where it runs)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=None).render_as_string(hide_password=False)


def open_storage(url: str, *, driver: bool = False) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``; a PostgreSQL password may come from PGPASSWORD.

    ``driver``: the storage of a sweep's driver, which keeps its running trials in memory
    (``DriverStorage``); everything else (status, report, dashboard) reads the database.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserInputError(
            f"--storage: {masked(url)!r} is not an SQLAlchemy URL (e.g. {DEFAULT_STORAGE})"
        ) from None
    kwargs: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        # Several processes (driver, dashboard, status) share the file.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        storage = (DriverStorage if driver else ResilientStorage)(url, engine_kwargs=kwargs)
        if sqlite and parsed.database not in (None, "", ":memory:"):
            _sqlite_wal(storage)
        return storage
    except ImportError as exc:
        raise UserInputError(
            f"--storage {masked(url)}: the database driver is not installed ({exc}); "
            "for PostgreSQL: pip install 'vlsweep[postgres]'"
        ) from None
    except Exception as exc:
        # SQLAlchemy's messages can quote the URL; never echo a password.
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if parsed.password:
            text = text.replace(parsed.password, "***")
        where = f"the database server at {parsed.host}:{parsed.port or 5432}" if parsed.host else "it"
        raise UserInputError(
            f"--storage {masked(url)}: cannot open {where}: {text}; check that the server is up "
            "and reachable from here, and the user, password (PGPASSWORD) and database name"
        ) from None


# -- a storage that rides out a database restart --------------------------------------------

# How long a sweep waits for its database to come back before giving up (a PostgreSQL
# restart or failover takes seconds; a sweep that runs for days should not die of it).
STORAGE_RETRY_ENV = "VLSWEEP_STORAGE_RETRY_SECONDS"
STORAGE_RETRY_SECONDS = 300.0


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not bad data or a broken schema."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sa.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (sa.OperationalError, sa.InterfaceError))


class ResilientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, retrying each call while the database is unreachable.

    Optuna's own RDBStorage raises on the first dropped connection, which would end a
    days-long sweep because PostgreSQL restarted. ``pool_pre_ping`` replaces dead pooled
    connections; this retries the call itself, with backoff, for up to
    ``$VLSWEEP_STORAGE_RETRY_SECONDS`` (300 s). Our own few lines rather than a retry
    library: what matters is which SQLAlchemy errors are transient and the one message
    while waiting. Opening the storage is not retried: a database that is down at start
    is an error the user should see at once. A write whose commit reached the server just
    before the connection died may be applied twice; trial writes here are set-attribute
    and set-state calls, for which that is harmless.
    """

    _local = threading.local()

    def _retry(self, method: Any, args: tuple, kwargs: dict) -> Any:
        if getattr(self._local, "active", False):  # the outer call retries the whole thing
            return method(self, *args, **kwargs)
        limit = float(os.environ.get(STORAGE_RETRY_ENV, STORAGE_RETRY_SECONDS))
        deadline, delay, warned = time.monotonic() + limit, 0.5, False
        self._local.active = True
        try:
            while True:
                try:
                    result = method(self, *args, **kwargs)
                    if warned:
                        _log.warning("vlsweep: the study database is reachable again")
                    return result
                except Exception as exc:
                    if not _transient(exc) or time.monotonic() + delay > deadline:
                        raise
                    if not warned:
                        _log.warning(
                            "vlsweep: lost the study database (%s); retrying for up to %.0f s",
                            str(getattr(exc, "__cause__", None) or exc).strip().splitlines()[0][:200],
                            limit,
                        )
                        warned = True
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            self._local.active = False


def _retrying(name: str) -> Any:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(method, args, kwargs)

    return call


# Every call that reads or writes the database, including those Optuna's cache layer makes.
for _name in (
    *(n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_") and n != "remove_session"),
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
    "record_heartbeat",
):
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(ResilientStorage, _name, _retrying(_name))


class DriverStorage(ResilientStorage):
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
    writer, and it is private.
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
        """Write the parameters held for ``trial_id`` (one transaction)."""
        with self._lock:
            held = self._held.pop(trial_id, [])
        if not held:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        def write(storage: DriverStorage) -> None:
            with _create_scoped_session(storage.scoped_session, True) as session:
                for name, internal, distribution, previous in held:
                    storage._set_trial_param_without_commit(
                        session, trial_id, name, internal, distribution, previous
                    )

        self._retry(write, (), {})  # on an error the parameters are dropped: the trial can still be told

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


def _set_param(trial: FrozenTrial, name: str, internal: float, distribution: Any) -> None:
    trial.params[name] = distribution.to_external_repr(internal)
    trial.distributions[name] = distribution


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging for a study file: readers (dashboard, status) never block the
    driver, and a commit costs about a third (no fsync per transaction; a commit survives
    a killed process, only a power cut may lose the last ones). WAL needs a local disk:
    share a study across machines through PostgreSQL, not SQLite on NFS."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener get the pragmas too


def create_or_check(
    storage: optuna.storages.RDBStorage,
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


def make_sampler(
    kind: str, seed: int | None, window: int | None = None, rungs: Sequence[int] = ()
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler with Optuna's defaults, reading the study once per ask. With
    ``window`` (the sweep's concurrency), each ask sees a history that depends on the
    trial's number only (``OneReadPerAsk``), so a seeded sweep proposes the same points
    however its trials' completions interleave. With ``rungs`` (early stopping), TPE
    learns from what stopped trials measured at the rungs (``at_highest_rung``)."""
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
    return OneReadPerAsk(inner, window=window, rungs=rungs if kind == "tpe" else ())


# -- learning from the rungs ----------------------------------------------------------------

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
    re-reads every trial from the database for each parameter it samples: with SQLite,
    about 5 ms per read and 7 parameters per trial, a third of the driver's time per trial.
    Within one ask nothing else writes the study (the sweep driver is the only writer; a
    second driver is refused), and the one thing that changes, the asked trial's own
    parameters, is what samplers exclude; so one read per ask gives the sampler the same
    trials. The sampling itself is ``inner``'s, unchanged.

    With ``window`` (reproducible sweeps), trial k sees trials up to k - window as they
    ended, and the ``window - 1`` trials before it as still running, whether or not they
    have finished by then (the searcher asks for trial k only once the earlier ones have
    ended). What a trial is proposed then depends on its number, not on which of the
    trials in flight happened to finish first.

    With ``rungs`` (early stopping), the trials are then seen ``at_highest_rung``.
    """

    def __init__(
        self, inner: optuna.samplers.BaseSampler, window: int | None = None, rungs: Sequence[int] = ()
    ):
        self.inner = inner
        self.window = window
        self.rungs = list(rungs)
        self._view: TrialsSnapshot | None = None

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        if self._view is None or self._view.study is not study:
            self._view = TrialsSnapshot(study)
            if self.window or self.rungs:
                trials = self._view.get_trials(deepcopy=False)
                if self.window:
                    trials = _as_of(trials, trial.number, self.window)
                if self.rungs:
                    trials = at_highest_rung(trials, self.rungs)
                self._view._trials = trials
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


# -- driver heartbeat ---------------------------------------------------------------------


def claim_driver(study: optuna.Study, *, force: bool = False) -> str:
    """Record this process as the sweep's driver; refuse if another one is alive."""
    info = study.user_attrs.get("driver")
    if info and not force:
        age = time.time() - float(info.get("heartbeat", 0))
        if age < HEARTBEAT_STALE_SECONDS and _maybe_alive(info):
            raise UserInputError(
                f"study {study.study_name!r} is being run by pid {info.get('pid')} on {info.get('host')} "
                f"(heartbeat {age:.0f}s ago); wait for it, or stop it first"
            )
    driver_id = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
    heartbeat(study, driver_id)
    return driver_id


def _maybe_alive(info: dict[str, Any]) -> bool:
    """False when the recorded driver ran on this host and its process is gone."""
    if info.get("host") != socket.gethostname():
        return True  # another machine: only the heartbeat can tell
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def heartbeat(study: optuna.Study, driver_id: str) -> None:
    host, pid, _ = driver_id.split(":")
    study.set_user_attr("driver", {"id": driver_id, "host": host, "pid": int(pid), "heartbeat": time.time()})


def release_driver(study: optuna.Study, driver_id: str) -> None:
    info = study.user_attrs.get("driver")
    if info and info.get("id") == driver_id:
        study.set_user_attr("driver", None)


# -- reading results ----------------------------------------------------------------------


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in trials:
        out[t.state.name] += 1
    return out


def finished_toward_budget(trials: list[FrozenTrial]) -> int:
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
    """Optuna's rule: every value given to ``trial.set_constraint`` is <= 0."""
    return all(c <= 0 for c in trial.system_attrs.get("constraints") or ())


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


def load_existing(url: str, name: str) -> optuna.Study:
    storage = open_storage(url)
    # Study names only: Optuna's study summaries read every trial of every study.
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UserInputError(
            f"no study {name!r} in {masked(url)}; studies there: {names or 'none'} (see --storage)"
        )
    return optuna.load_study(study_name=name, storage=storage)
