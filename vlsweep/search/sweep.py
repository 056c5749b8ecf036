"""``vlsweep launch`` / ``resume``: the sweep loop. One Optuna study, trials run by Ray Tune.

The driver opens (or creates) the study, records itself as the study's driver, puts the
baseline and warm-start points first, then lets Ray Tune run the remaining trial budget
with ``OptunaAskTellSearcher`` proposing each point, and stops cleanly on Ctrl-C, SIGTERM
or a stop asked through the study. Resuming needs only the study: its sanitized config
is a study attr, and trials a killed driver left RUNNING are failed with a reason and
re-queued with the same parameters. With ``--address ray://`` the whole loop runs as one
Ray task on the cluster's head (``run_sweep_via_client``), calling ``run_sweep`` there.

The Ray backend (init, resources, leftover processes) is ``backend``, the schedulers are
``schedulers``, and the progress line and Tune callbacks are ``callbacks``.
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
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback

from vlsweep import artifacts, demo, outcomes, storages
from vlsweep.errors import SweepFailed, SweepInterrupted, UserInputError
from vlsweep.params import BASELINE
from vlsweep.search import lease, ray_security
from vlsweep.search.backend import (
    LOCAL_RAY_ATTR,
    check_shared_storage,
    check_trial_fits,
    ray_init,
    reap_local_ray,
    trial_resources,
)
from vlsweep.search.callbacks import Events, logger_callbacks, progress_line, trial_name
from vlsweep.search.config import SweepConfig, distributions, sanitized_config
from vlsweep.search.driver_storage import DriverStorage, create_or_check
from vlsweep.search.sampling import make_sampler
from vlsweep.search.schedulers import make_scheduler, rung_steps
from vlsweep.search.searcher import OptunaAskTellSearcher
from vlsweep.spaces import Space

Log = Callable[[str], None]
# Set on the study to ask the running driver to stop cleanly (as Ctrl-C would).
STOP_ATTR = "stop_requested"


def _seed_points(study: optuna.Study, cfg: SweepConfig, space: Space) -> None:
    """Baseline (trial 0) and warm-start points, once, when the study is new."""
    settings = cfg.settings()
    if cfg.search.baseline:
        point = {k: v for k, v in BASELINE.items() if space.active(k, settings, BASELINE)}
        # A range of the user's that leaves out the baseline's value (Optuna refuses a
        # categorical value off its choices): that parameter is sampled instead.
        point = {k: v for k, v in point.items() if not space.outside({k: v})}
        study.enqueue_trial(point, user_attrs={"baseline": True})
    dists = distributions(space)
    for i, ws in enumerate(cfg.search.warm_start):  # checked by load_sweep_config
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


def artifact_store_spec(cfg: SweepConfig, study: optuna.Study, storage_url: str, out_root: Path) -> str:
    """Where this sweep stores its trials' files: what the study recorded (a resumed sweep
    keeps its store, wherever it is resumed from), else the config's ``artifacts.store``
    (a relative directory taken from here), else the default beside the study. A study
    that has trials from before artifact storage stores none, as it did."""
    recorded = study.user_attrs.get(artifacts.STORE_ATTR)
    if recorded:
        return str(recorded)
    if study.get_trials(deepcopy=False):
        return artifacts.NONE
    spec = cfg.artifacts.store or artifacts.default_store(storage_url, out_root)
    if spec != artifacts.NONE and artifacts.is_local(spec):
        spec = str((Path.cwd() / Path(spec).expanduser()).resolve())
    return spec


def requeue_lost(study: optuna.Study, log: Log) -> int:
    """Fail trials a killed driver left RUNNING and queue them again with their parameters."""
    lost = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in lost:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
        study._storage.set_trial_user_attr(
            t._trial_id, "error", "lost: the sweep driver stopped while this trial ran; re-queued"
        )
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    if lost:
        log(f"re-queued {len(lost)} trial(s) lost with the previous driver: {[t.number for t in lost]}")
    return len(lost)


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
    from vlsweep import __version__

    space = cfg.parsed_space()
    loggers = logger_callbacks(cfg)  # a missing logger package is an error before anything is written
    storage = storages.open_storage(storage_url, kind=DriverStorage)
    window = cfg.search.max_concurrent if cfg.search.reproducible else None
    rungs = rung_steps(cfg) if cfg.search.learn_from_rungs else []
    sampler = make_sampler(cfg.search.sampler, cfg.search.seed, window, rungs)
    names = [o.name for o in cfg.objectives]
    directions = [o.direction or "minimize" for o in cfg.objectives]
    new_study = cfg.name not in optuna.get_all_study_names(storage)
    study = create_or_check(storage, cfg.name, directions, names, sampler)
    driver = lease.claim_driver(study)
    if study.user_attrs.get(STOP_ATTR):
        study.set_user_attr(STOP_ATTR, None)  # a request meant for an earlier driver
    reap_local_ray(study, log)
    out_root = Path(cfg.output_dir or f"runs/{cfg.name}")
    out_root = (out_root if out_root.is_absolute() else Path.cwd() / out_root).resolve()
    store_spec = artifact_store_spec(cfg, study, storage_url, out_root)
    searcher: OptunaAskTellSearcher | None = None
    started_ray = False
    discard = False  # a study this call created, refused before any trial ran: not kept
    try:
        if not resume or not study.user_attrs.get("config"):
            study.set_user_attr("config", sanitized_config(cfg, base_dir))
            study.set_user_attr("vlsweep_version", __version__)
        study.set_user_attr(artifacts.STORE_ATTR, store_spec)
        store = artifacts.open_store(store_spec) if store_spec != artifacts.NONE else None
        trials = study.get_trials(deepcopy=False)
        if not trials:
            _seed_points(study, cfg, space)
        requeue_lost(study, log)
        remaining = cfg.search.trials - outcomes.finished_toward_budget(study.get_trials(deepcopy=False))
        log(
            f"study {cfg.name!r} in {storages.masked(storage_url)}: "
            f"{remaining} of {cfg.search.trials} trials to run"
        )
        if remaining <= 0:
            return study
        demo.resolve_model(cfg.model)  # a builtin model's shipped files, before Ray starts
        started_ray = ray_init(cfg, address, log, study)
        storage_path = cfg.ray.storage_path or str(out_root / "ray")
        check_shared_storage(cfg, storage_path, store_spec)
        scaling = check_trial_fits(cfg, log)
        spec = cfg.train_config().model_dump(mode="json")
        sanitized = sanitized_config(cfg, base_dir)
        spec["data"], spec["model"] = sanitized["data"], sanitized["model"]
        # Trials evaluate at every rung, so early stopping judges measured metrics.
        spec["budget"]["eval_at"] = sorted({*spec["budget"]["eval_at"], *rung_steps(cfg)})
        from vlsweep.search import worker

        if trainable is None:
            trainable = tune.with_parameters(
                worker_fn or worker.run,
                spec=spec,
                base_dir=str(base_dir),
                out_root=str(out_root),
                threads=max(1, int(cfg.resources.cpus_per_trial)),
                driver_dir=os.getcwd(),
                artifact_store=None if store is None else store_spec,
            )
        request = trial_resources(cfg)
        resourced = tune.with_resources(
            trainable,
            {
                "cpu": request.get("CPU", 0.0),
                "gpu": request.get("GPU", 0.0),
                "memory": request.get("memory", 0),
            },
        )
        searcher = OptunaAskTellSearcher(
            study,
            space,
            cfg.settings(),
            names,
            cfg.budget.steps,
            constraints=cfg.parsed_constraints(),
            run_id=driver,
            fail_fast=cfg.search.fail_fast,
            reproducible_window=window,
            artifact_store=store,
            keep_last=cfg.artifacts.keep_last,
            rungs=rungs,
        )
        started = time.time()
        events = Events(
            searcher, study, driver, names, started, cfg.search.trials, log, request=request, scaling=scaling
        )
        stop = StopRequests(searcher, log, study)
        if scheduler is None:
            scheduler = make_scheduler(cfg, names, directions)
        tuner = tune.Tuner(
            resourced,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=cfg.search.max_concurrent,
                reuse_actors=cfg.resources.reuse_actors,
                time_budget_s=cfg.search.time_budget_s,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=f"{cfg.name}-{int(started)}",
                storage_path=storage_path,
                verbose=0,
                callbacks=[events, *loggers, *(callbacks or [])],
                failure_config=tune.FailureConfig(max_failures=cfg.resources.retries),
                stop=stop,
            ),
        )
        with stop.catching_signals():
            tuner.fit()
        _finish_run(cfg, searcher, stop, started, log)
        final = progress_line(study, names, started, cfg.search.trials, events.tune_trials)
        if final.split("]", 1)[1] != events.last_line.split("]", 1)[-1]:
            log(final)
    except UserInputError:
        discard = new_study and all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        raise
    finally:
        if searcher is not None:
            searcher.close("the sweep driver stopped before this trial finished")
        lease.release_driver(study, driver)
        if started_ray:
            import ray

            ray.shutdown()
            study.set_user_attr(LOCAL_RAY_ATTR, None)
        if discard:
            optuna.delete_study(study_name=cfg.name, storage=storage)
    return study


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
    budget = cfg.search.time_budget_s
    if budget is not None and time.time() - started >= budget:
        searcher.close(f"stopped: search.time_budget_s ({budget:g} s) reached", requeue=False)


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
        return False

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
    ray_security.prepare_join()
    for attempt in range(3):
        try:
            ray.init(address=address, log_to_driver=True, logging_level=logging.ERROR)
            break
        except ray_security.join_errors() as err:
            # The client server starts a server per session; that start can fail while an
            # earlier session's one is still shutting down. Twice more, as a user would; not
            # when the token is missing (a client without it waits 30 s for a timeout), nor
            # when it was refused.
            no_token = ray_security.token_source() is None and "timeout" in str(err)
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
            if attempt == 2 or no_token or not isinstance(err, ConnectionError):
                hint = ray_security.token_hint()
                msg = f"--address {address}: cannot connect through Ray Client ({last}); {hint}"
                raise UserInputError(msg) from None
            log(f"Ray Client connection failed ({last}); retrying in 5 s")
            time.sleep(5)
    try:
        sanitized = storages.strip_password(storage_url)
        drive = ray.remote(num_cpus=0, max_retries=0, resources={"node:__internal_head__": 0.001})(
            _drive_on_cluster
        )
        ref = drive.remote(sanitized_config(cfg, base_dir), str(base_dir), sanitized, resume)
        try:
            # Waiting in short slices keeps Ctrl-C here responsive; it then interrupts the
            # driver on the head, which re-queues the running trials as a local Ctrl-C does.
            # The Ctrl-C is taken as a flag between slices: raised inside Ray Client's gRPC
            # call, a KeyboardInterrupt can be swallowed there and the wait goes on.
            interrupted = threading.Event()
            main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, lambda _s, _f: interrupted.set()) if main else None
            try:
                while not ray.wait([ref], timeout=1.0)[0]:
                    if interrupted.is_set():
                        raise KeyboardInterrupt
            finally:
                if main:
                    signal.signal(signal.SIGINT, previous)  # a second Ctrl-C leaves at once
            ray.get(ref)
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


def _request_stop_and_wait(storage_url: str, name: str, seconds: float) -> None:
    try:
        study = storages.load_existing(storage_url, name)
    except UserInputError:
        return  # the driver never created the study
    study.set_user_attr(STOP_ATTR, {"host": socket.gethostname(), "at": time.time()})
    deadline = time.time() + seconds
    while study.user_attrs.get("driver") and time.time() < deadline:
        time.sleep(0.5)
