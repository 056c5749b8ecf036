"""``vlsweep launch`` / ``resume``: the sweep loop. One Optuna study, trials run by Ray Tune.

The driver opens (or creates) the study, records itself as the study's driver, puts the
baseline and warm-start points first, then lets Ray Tune run the remaining trial budget
with ``OptunaAskTellSearcher`` proposing each point, and stops cleanly on Ctrl-C, SIGTERM
or a stop asked through the study. Resuming needs only the study: its sanitized config
is a study attr, and trials a killed driver left RUNNING are failed with a reason and
re-queued with the same parameters. With ``--address ray://`` the whole loop runs as one
Ray task on the cluster's head (``run_sweep_via_client``), calling ``run_sweep`` there.

``run_sweep`` reads as its parts: the config resolved once (``plan.resolve``), the study's
lifetime for this driver (``_driving``: open, lease, seed, re-queue, release), Ray's
(``_on_ray``: start or join, checks, stop), the searcher's (``_searching``), and the Tuner
(``build_tuner``). The Ray backend (init, resources, leftover processes) is ``backend``,
the schedulers are ``schedulers``, and the progress line and Tune callbacks are
``callbacks``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune import Callback

from vlsweep import artifacts, demo, object_storage, outcomes, storages
from vlsweep.errors import SweepFailed, SweepInterrupted, UserInputError
from vlsweep.params import BASELINE
from vlsweep.search import driver_storage, failures, lease, ray_security, transfer
from vlsweep.search.backend import (
    LOCAL_RAY_ATTR,
    check_shared_storage,
    check_trial_fits,
    ray_init,
    reap_local_ray,
    trials_at_once,
)
from vlsweep.search.callbacks import Events, logger_callbacks, trial_name
from vlsweep.search.config import SweepConfig, sanitized_config
from vlsweep.search.driver_storage import create_or_check
from vlsweep.search.plan import SweepPlan, resolve
from vlsweep.search.sampling import make_sampler
from vlsweep.search.schedulers import make_scheduler
from vlsweep.search.searcher import EXPERIMENT_ATTR, OptunaAskTellSearcher
from vlsweep.search.worker import artifacts_key

Log = Callable[[str], None]
# Set on the study to ask the running driver to stop cleanly (as Ctrl-C would).
STOP_ATTR = "stop_requested"


def _seed_points(study: optuna.Study, plan: SweepPlan) -> None:
    """The baseline (trial 0, or first after carried points) and warm-start points, once, when
    the study is new."""
    space, dists = plan.space, plan.distributions
    if plan.cfg.search.baseline:
        point = {k: v for k, v in BASELINE.items() if space.active(k, plan.settings, BASELINE)}
        # A range of the user's that leaves out the baseline's value (Optuna refuses a
        # categorical value off its choices): that parameter is sampled instead.
        point = {k: v for k, v in point.items() if not space.outside({k: v})}
        study.enqueue_trial(point, user_attrs={"baseline": True})
    for i, ws in enumerate(plan.cfg.search.warm_start):  # checked by load_sweep_config
        params = {k: v for k, v in ws.params.items() if k in dists}
        if ws.values is None:
            study.enqueue_trial(params, user_attrs={"warm_start": i})
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                values=[float(ws.values[m]) for m in study.metric_names],  # type: ignore[union-attr]
                user_attrs={"warm_start": i},
            )
        )


def artifact_store_url(cfg: SweepConfig, study: optuna.Study, storage_url: str, out_root: Path) -> str:
    """Where this sweep stores its trials' files: what the study recorded (a resumed sweep
    keeps its store, wherever it is resumed from), else the config's ``artifacts.store``
    (a relative directory taken from here), else the default beside the study. A study
    that has trials from before artifact storage stores none, as it did."""
    recorded = study.user_attrs.get(artifacts.STORE_ATTR)
    if recorded:
        return str(recorded)
    if study.get_trials(deepcopy=False):
        return artifacts.NONE
    url = cfg.artifacts.store or artifacts.default_store(storage_url, out_root)
    if url != artifacts.NONE and artifacts.is_local(url):
        url = str((Path.cwd() / Path(url).expanduser()).resolve())
    return url


def requeue_lost(
    study: optuna.Study, log: Log, store: Any = None, ray_storage_path: str | None = None
) -> int:
    """Fail trials a killed driver left RUNNING and queue them again with their parameters.
    What they may have begun to store in ``store`` (never linked: they did not finish) and
    their checkpoints in ``ray_storage_path`` (their run again starts a new Ray trial) are
    removed."""
    lost = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in lost:
        _remove_leftovers(t, store, ray_storage_path, log)
        # A carried point stays one on its re-run (status shows it, not the lost run).
        kept = {k: t.user_attrs[k] for k in (outcomes.CARRIED_ATTR,) if k in t.user_attrs}
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **kept}, skip_if_exists=False)
        study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
        study._storage.set_trial_user_attr(
            t._trial_id, "error", "lost: the sweep driver stopped while this trial ran; re-queued"
        )
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    if lost:
        log(f"re-queued {len(lost)} trial(s) lost with the previous driver: {[t.number for t in lost]}")
    return len(lost)


def _remove_leftovers(trial: FrozenTrial, store: Any, ray_storage_path: str | None, log: Log) -> None:
    experiment = trial.user_attrs.get(EXPERIMENT_ATTR)
    ray_id = trial.user_attrs.get("ray_trial_id")
    if not experiment or not ray_id:
        return
    try:
        if store is not None:
            artifacts.remove_unlinked(store, artifacts_key(experiment, ray_id, trial.number))
    except Exception as err:  # storage unreachable now: the sweep goes on without tidying
        log(f"warning: could not remove what lost trial {trial.number} left in the store: {err}")
    remove_checkpoints(ray_storage_path, experiment, [ray_id], log)


def remove_checkpoints(ray_storage_path: str | None, experiment: str, ray_ids: list[str], log: Log) -> None:
    """Remove the Ray Tune checkpoints of these trials of the run ``experiment`` (trials
    that will not run again under that run: lost with a driver, or stopped with it)."""
    if not ray_storage_path or not ray_ids:
        return
    try:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(ray_storage_path)
        # Each trial's directory, as callbacks.trial_name names it, in its run's experiment.
        found = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{experiment}", allow_not_found=True))
        for info in found:
            if info.type == pyarrow.fs.FileType.Directory and any(
                info.base_name.endswith(f"-{i}") for i in ray_ids
            ):
                for sub in fs.get_file_info(pyarrow.fs.FileSelector(info.path)):
                    if sub.base_name.startswith("checkpoint_"):
                        fs.delete_dir(sub.path)
    except Exception as err:  # storage unreachable now: the sweep goes on without tidying
        log(f"warning: could not remove the checkpoints of trials that did not finish: {err}")


def run_sweep(
    cfg: SweepConfig,
    base_dir: Path,
    storage_url: str,
    *,
    address: str | None = None,
    resume: bool = False,
    scheduler: Any = None,
    trainable: Callable[[dict[str, Any]], None] | None = None,
    worker_fn: Callable[..., None] | None = None,
    callbacks: list[Callback] | None = None,
    log: Log = print,
) -> optuna.Study:
    """Run (or continue) the sweep to its trial budget; returns the study.

    ``scheduler`` replaces the one ``search.early_stopping`` names (any Ray Tune scheduler).
    ``trainable`` replaces the trial engine (a Ray Tune function trainable taking the
    searcher's config); the overhead benchmark runs the sweep machinery on trivial trials.
    ``worker_fn`` replaces only the function each worker runs per trial (default
    ``vlsweep.search.worker.run``, same arguments), and ``callbacks`` adds Ray Tune
    callbacks to the driver: the fault-injection tests' hooks.

    Raises ``SweepFailed`` when the first ``search.fail_fast`` trials all fail with the
    same error, and ``SweepInterrupted`` after Ctrl-C or SIGTERM (trials that were running
    are re-queued for ``vlsweep resume``).
    """
    plan = resolve(cfg, base_dir)
    loggers = logger_callbacks(cfg)  # a missing logger package is an error before anything is written
    with _driving(plan, storage_url, resume, log) as run:
        if run.remaining <= 0:
            return run.study
        demo.resolve_model(cfg.model)  # a builtin model's shipped files, before Ray starts
        with _on_ray(plan, address, run, log) as scaling, _searching(plan, run) as searcher:
            started = time.time()
            searcher.experiment = experiment_name(cfg, started)
            events = Events(
                searcher,
                run.study,
                run.driver,
                plan.objective_names,
                started,
                cfg.search.trials,
                log,
                request=plan.request,
                scaling=scaling,
                workers=cfg.resources.train_workers,
                retries=cfg.resources.retries,
                node_loss_retries=cfg.resources.node_loss_retries,
            )
            stop = StopRequests(searcher, log, run.study)
            tuner = build_tuner(
                plan,
                trainable or _trainable(plan, run.store_url, worker_fn),
                searcher,
                scheduler or make_scheduler(cfg, plan.objective_names, plan.directions),
                num_samples=run.remaining,
                started=started,
                callbacks=[events, *loggers, *(callbacks or [])],
                stop=stop,
                autoscaling=scaling,
                log=log,
            )
            with stop.catching_signals(), _results_without_metrics():
                tuner.fit()
            _finish_run(cfg, searcher, stop, started, log)
            events.final_line()
    return run.study


@dataclass
class _Run:
    """A study this driver holds the lease on, ready for trials."""

    study: optuna.Study
    driver: str  # the lease's id
    store_url: str  # where the trials' files go (artifacts.NONE: nowhere)
    store: Any  # the artifact store itself (None: none)
    remaining: int  # trials still to run toward search.trials


@contextlib.contextmanager
def _driving(plan: SweepPlan, storage_url: str, resume: bool, log: Log) -> Iterator[_Run]:
    """The study's lifetime for this driver: open (or create) it with its sampler, claim
    the lease, record the config, put the baseline and warm-start points first, re-queue
    what a killed driver left running. On the way out the lease is released, and a study
    this call created that bad input stopped before any trial ran is not kept."""
    from vlsweep import __version__

    cfg = plan.cfg
    storage = storages.open_storage(storage_url, kind=driver_storage.kind(log))
    new_study = cfg.name not in optuna.get_all_study_names(storage)
    carried = transfer.prepare(plan, storage_url, log, new=new_study)
    sampler = make_sampler(
        cfg.search.sampler,
        cfg.search.seed,
        plan.window,
        plan.sampler_rungs,
        prior=carried.prior if carried else (),
    )
    study = create_or_check(storage, cfg.name, plan.directions, plan.objective_names, sampler)
    driver = lease.claim_driver(study)
    discard = False
    try:
        if study.user_attrs.get(STOP_ATTR):
            study.set_user_attr(STOP_ATTR, None)  # a request meant for an earlier driver
        reap_local_ray(study, log)
        store_url = artifact_store_url(cfg, study, storage_url, plan.out_root)
        if not resume or not study.user_attrs.get("config"):
            study.set_user_attr("config", plan.recorded_config)
            study.set_user_attr("vlsweep_version", __version__)
        # Object storage tried before any trial (a bad key would fail every trial at its end).
        store = artifacts.open_store(store_url, check=True) if store_url != artifacts.NONE else None
        object_storage.check_storage_path(plan.ray_storage_path)
        study.set_user_attr(artifacts.STORE_ATTR, store_url)
        if not study.get_trials(deepcopy=False):
            for params, attrs in carried.points if carried else ():  # the carried front first
                study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
            _seed_points(study, plan)
        requeue_lost(study, log, store, plan.ray_storage_path)
        remaining = cfg.search.trials - outcomes.finished_toward_trials(study.get_trials(deepcopy=False))
        log(
            f"study {cfg.name!r} in {storages.masked(storage_url)}: "
            f"{remaining} of {cfg.search.trials} trials to run"
        )
        yield _Run(study=study, driver=driver, store_url=store_url, store=store, remaining=remaining)
    except UserInputError:
        discard = new_study and all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        raise
    finally:
        lease.release_driver(study, driver)
        if discard:
            optuna.delete_study(study_name=cfg.name, storage=storage)


@contextlib.contextmanager
def _on_ray(plan: SweepPlan, address: str | None, run: _Run, log: Log) -> Iterator[bool]:
    """Ray for the sweep: a local one started (locked) or a cluster joined, then checked:
    shared storage on a cluster of several nodes, and a node that can hold a trial. Yields
    whether trials may wait for an autoscaler; a Ray started here is stopped on the way out."""
    started_ray = ray_init(plan.cfg, address, log, run.study)
    try:
        check_shared_storage(plan.cfg, plan.ray_storage_path, run.store_url)
        yield check_trial_fits(plan.cfg, log)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
            run.study.set_user_attr(LOCAL_RAY_ATTR, None)


@contextlib.contextmanager
def _searching(plan: SweepPlan, run: _Run) -> Iterator[OptunaAskTellSearcher]:
    """The searcher that proposes each trial; on the way out, whatever it left open is
    closed (and re-queued: the driver stopped before those trials finished)."""
    searcher = _searcher(plan, run)
    try:
        yield searcher
    finally:
        searcher.close("the sweep driver stopped before this trial finished")
        # Trials stopped with the driver (Ctrl-C, a stop, fail fast, the time budget) run
        # again, if at all, as new trials: their checkpoints are of no more use.
        remove_checkpoints(
            plan.ray_storage_path,
            searcher.experiment,
            searcher.unfinished,
            logging.getLogger("vlsweep").warning,
        )


def _searcher(plan: SweepPlan, run: _Run) -> OptunaAskTellSearcher:
    cfg = plan.cfg
    return OptunaAskTellSearcher(
        run.study,
        plan.space,
        plan.settings,
        plan.objective_names,
        cfg.budget.steps,
        constraints=plan.constraints,
        run_id=run.driver,
        fail_fast=cfg.search.fail_fast,
        reproducible_window=plan.window,
        artifact_store=run.store,
        keep_last=cfg.artifacts.keep_last,
        rungs=plan.sampler_rungs,
    )


def _trainable(plan: SweepPlan, store_url: str, worker_fn: Callable[..., None] | None) -> Any:
    """The function each trial runs (the trial engine, through ``worker.run``), with what
    every trial of the sweep shares bound to it."""
    from vlsweep.search import train_workers, worker

    extra: dict[str, Any] = {}
    function = worker_fn or worker.run
    scaling = train_workers.scaling(plan.cfg, plan.ray_storage_path)
    if scaling is not None:  # a Ray Train run per trial, whose ranks run worker's trial
        if worker_fn is not None:
            raise ValueError(
                "worker_fn replaces a one-worker trial's function; resources.train_workers is above 1"
            )
        function, extra = train_workers.run, scaling
    return tune.with_parameters(
        function,
        trial_spec=plan.trial_spec,
        base_dir=str(plan.base_dir),
        out_root=str(plan.out_root),
        threads=max(1, int(plan.cfg.resources.cpus_per_trial)),
        driver_dir=os.getcwd(),
        artifact_store=None if store_url == artifacts.NONE else store_url,
        **extra,
    )


@contextlib.contextmanager
def _results_without_metrics() -> Iterator[None]:
    """A trial's results include some without the objectives (where it runs, its training
    curves, its checkpoints), which schedulers skip; Tune's strict check would refuse
    them under a scheduler that names a metric (Ray's ASHA). Tune's own switch for it."""
    key = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def experiment_name(cfg: SweepConfig, started: float) -> str:
    """Ray Tune's name for this run of the sweep (its directory in ray.storage_path)."""
    return f"{cfg.name}-{int(started)}"


def build_tuner(
    plan: SweepPlan,
    trainable: Any,
    searcher: OptunaAskTellSearcher,
    scheduler: Any,
    *,
    num_samples: int,
    started: float,
    callbacks: list[Callback],
    stop: tune.Stopper,
    autoscaling: bool = False,
    log: Log = print,
) -> tune.Tuner:
    """Ray Tune's Tuner for the sweep: each trial asks for the plan's resources; the
    searcher proposes, the scheduler stops early, Tune retries a dead worker.

    A trial on several train workers is Ray's recipe for tuning Ray Train runs: the Tune
    trial only starts the run and waits, so it asks for no CPU (Ray needs some resource in
    every request: 1 MiB of its logical memory), Ray Train reserves the workers, and no
    more trials run at once than the cluster holds (Tune cannot see the workers' share:
    more trials would wait inside Ray Train, out of the progress line's sight)."""
    cfg = plan.cfg
    resources = {
        "cpu": plan.request.get("CPU", 0.0),
        "gpu": plan.request.get("GPU", 0.0),
        "memory": plan.request.get("memory", 0),
    }
    concurrent = cfg.search.max_concurrent
    reuse = cfg.resources.reuse_actors
    if cfg.resources.train_workers > 1:
        resources = {"cpu": 0.0, "gpu": 0.0, "memory": 2**20}
        # Nothing to keep between trials: each trial's ranks load the base themselves.
        reuse = False
        # (Not on a cluster an autoscaler grows: the cap would keep it from ever being asked.)
        room = None if autoscaling else trials_at_once(plan.request, cfg.resources.train_workers)
        if room and room < concurrent:
            log(
                f"search.max_concurrent {concurrent} lowered to {room}: the Ray cluster holds {room} "
                f"trial{'s' if room != 1 else ''} of {cfg.resources.train_workers} train workers at once"
            )
            concurrent = room
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=concurrent,
            reuse_actors=reuse,
            time_budget_s=cfg.search.time_budget_s,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=experiment_name(cfg, started),
            storage_path=plan.ray_storage_path,
            verbose=0,
            callbacks=callbacks,
            # Both classes' runs again; callbacks.Events holds each to its own cap.
            failure_config=tune.FailureConfig(
                max_failures=failures.tune_max_failures(
                    cfg.resources.retries, cfg.resources.node_loss_retries
                )
            ),
            # A trial's last checkpoint (budget.checkpoint_steps) only: a trial run again
            # continues from it; Events removes it when the trial ends.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=stop,
        ),
    )


def _finish_run(
    cfg: SweepConfig, searcher: OptunaAskTellSearcher, stop: StopRequests, started: float, log: Log
) -> None:
    """Close the trials Tune left unfinished, saying why; raise when the sweep stopped early."""
    if searcher.abort_reason:
        searcher.close(f"stopped: {searcher.abort_reason}", requeue=False)
        raise SweepFailed(searcher.abort_reason)
    if stop.signal_name:
        requeued = searcher.close(f"interrupted ({stop.signal_name})")
        raise SweepInterrupted(
            f"interrupted ({stop.signal_name}): "
            + (f"{len(requeued)} running trial(s) re-queued {requeued}; " if requeued else "")
            + f"`vlsweep resume {cfg.name}` continues the sweep"
        )
    limit_s = cfg.search.time_budget_s
    if limit_s is not None and time.time() - started >= limit_s:
        searcher.close(f"stopped: search.time_budget_s ({limit_s:g} s) reached", requeue=False)


class StopRequests(tune.Stopper):
    """Ctrl-C and SIGTERM stop the sweep cleanly: no new trials, running ones stopped (and
    re-queued), the study left consistent. A second Ctrl-C stops at once (KeyboardInterrupt;
    the driver still re-queues what ran). Also ends the sweep when fail-fast trips."""

    def __init__(self, searcher: OptunaAskTellSearcher, log: Log, study: optuna.Study | None = None):
        self.searcher, self.log, self.study = searcher, log, study
        self.signal_name: str | None = None
        self._watching = threading.Event()

    # Tune pickles its stopper into tuner.pkl: never the study (its URL may hold a password).
    def __getstate__(self) -> dict[str, Any]:
        return {"signal_name": self.signal_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, searcher=None, log=print, study=None, _watching=threading.Event())

    def _watch_requests(self) -> None:
        """A stop asked for through the study (`vlsweep launch --address ray://` on Ctrl-C,
        when this driver runs on the cluster): checked every 2 s."""
        while self._watching.is_set() and self.signal_name is None:
            try:
                request = self.study.user_attrs.get(STOP_ATTR) if self.study is not None else None
            except Exception:  # the storage retries on its own; try again next time
                request = None
            if request:
                self.signal_name = f"stop requested from {request.get('host', '?')}"
                self.log(f"{self.signal_name}: stopping the sweep; running trials are re-queued")
            time.sleep(2.0)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # A trial the driver already failed (over a failure class's cap) that Tune ran again.
        return self.searcher is not None and self.searcher.closed(trial_id)

    def stop_all(self) -> bool:
        return self.signal_name is not None or self.searcher.abort_reason is not None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = "Ctrl-C" if signum == signal.SIGINT else name
            self.log(
                f"{self.signal_name}: stopping the sweep; running trials are re-queued "
                "(Ctrl-C again to stop at once)"
            )
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        self._watching.set()
        watcher = threading.Thread(target=self._watch_requests, daemon=True)
        watcher.start()
        try:
            with self._signal_handlers():
                yield
        finally:
            self._watching.clear()

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; Tune's own handling applies
            return
        # Tune's own SIGINT handler only ends its loop, leaving the searcher's trials open.
        previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if previous_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


def same_database(a: str, b: str) -> bool:
    """Two storage URLs name the same database (passwords aside)."""
    from sqlalchemy.engine import make_url

    try:
        ua, ub = make_url(a), make_url(b)
    except Exception:
        return False
    return ua.set(password=None) == ub.set(password=None)


def _drive_on_cluster(cfg_json: dict[str, Any], base_dir: str, storage_url: str, resume: bool) -> str:
    """The sweep driver, run as a Ray task on the cluster's head node (Ray Client mode)."""
    cfg = SweepConfig.model_validate(cfg_json)
    # The head's own VLSWEEP_STORAGE, when it names the same database, carries the password:
    # no password crosses the Ray Client connection.
    here = os.environ.get(storages.STORAGE_ENV)
    url = here if here and same_database(here, storage_url) else storage_url
    try:
        run_sweep(cfg, Path(base_dir), url, resume=resume, log=lambda line: print(line, flush=True))
    except UserInputError as err:
        head = socket.gethostname()
        raise UserInputError([f"on the Ray head node {head}: {p}" for p in err.problems]) from None
    return cfg.name


def run_sweep_via_client(
    cfg: SweepConfig, base_dir: Path, storage_url: str, address: str, log: Log, resume: bool = False
) -> None:
    """``--address ray://HOST:10001``: the whole driver (searcher, fail fast, progress) runs
    as one Ray task on the cluster's head node, which must reach the study database; this
    process streams its output and waits. Ray Tune on a Ray Client would instead pickle the
    searcher to the cluster without its study (and so without any password)."""
    import ray
    from sqlalchemy.engine import make_url

    if make_url(storage_url).get_backend_name() == "sqlite":
        raise UserInputError(
            f"--storage {storages.masked(storage_url)}: with --address ray://..., the sweep's driver runs on "
            "the cluster, which must reach the study: use a PostgreSQL storage (see docs/cluster.md)"
        )
    log(f"connecting to {address} (Ray Client); the sweep's driver runs on the head node ...")
    _connect_client(address, log)
    try:
        drive = ray.remote(num_cpus=0, max_retries=0, resources={"node:__internal_head__": 0.001})(
            _drive_on_cluster
        )
        sanitized = storages.strip_password(storage_url)
        ref = drive.remote(sanitized_config(cfg, base_dir), str(base_dir), sanitized, resume)
        try:
            _wait_interruptibly(ref)
        except KeyboardInterrupt:
            # Asked through the study, not by cancelling the task: the driver stops as on a
            # Ctrl-C of its own, and leaving before it has would end the Ray Client session
            # and kill it mid-way. Its last act is releasing the study; a second Ctrl-C
            # leaves at once.
            log("Ctrl-C: asking the sweep's driver on the head node to stop ...")
            _request_stop_and_wait(storage_url, cfg.name, seconds=180)
            raise SweepInterrupted(
                f"interrupted (Ctrl-C): running trials re-queued; `vlsweep resume {cfg.name} "
                f"--address {address}` continues the sweep"
            ) from None
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            if isinstance(cause, (UserInputError, SweepFailed, SweepInterrupted)):
                raise cause from None
            raise
    finally:
        ray.shutdown()


def _connect_client(address: str, log: Log) -> None:
    """Connect through Ray Client, sending the token given for the cluster. The client
    server starts a server per session, and that start can fail while an earlier session's
    one is still shutting down: twice more, as a user would; not when the token is missing
    (a client without it waits 30 s for a timeout), nor when it was refused."""
    import ray

    for attempt in range(3):
        try:
            with ray_security.joining():
                ray.init(address=address, log_to_driver=True, logging_level=logging.ERROR)
            return
        except ray_security.join_errors() as err:
            no_token = ray_security.token_source() is None and "timeout" in str(err)
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
            if attempt == 2 or no_token or not isinstance(err, ConnectionError):
                hint = ray_security.token_hint()
                msg = f"--address {address}: cannot connect through Ray Client ({last}); {hint}"
                raise UserInputError(msg) from None
            log(f"Ray Client connection failed ({last}); retrying in 5 s")
            time.sleep(5)


def _wait_interruptibly(ref: Any) -> Any:
    """``ray.get(ref)``, waiting in 1 s slices so that Ctrl-C here is seen: raised inside
    Ray Client's gRPC call, a KeyboardInterrupt can be swallowed there and the wait goes
    on, so the Ctrl-C is taken as a flag between slices. A second Ctrl-C leaves at once."""
    import ray

    interrupted = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda _s, _f: interrupted.set()) if main else None
    try:
        while not ray.wait([ref], timeout=1.0)[0]:
            if interrupted.is_set():
                raise KeyboardInterrupt
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return ray.get(ref)


def _request_stop_and_wait(storage_url: str, name: str, seconds: float) -> None:
    try:
        study = storages.load_existing(storage_url, name)
    except UserInputError:
        return  # the driver never created the study
    study.set_user_attr(STOP_ATTR, {"host": socket.gethostname(), "at": time.time()})
    deadline = time.time() + seconds
    while study.user_attrs.get("driver") and time.time() < deadline:
        time.sleep(0.5)
