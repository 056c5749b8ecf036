"""``vlsweep launch`` / ``resume``: one Optuna study, trials run by Ray Tune.

The driver opens (or creates) the study, records itself as the study's driver, puts the
baseline and warm-start points first, then lets Ray Tune run the remaining trial budget
with ``OptunaAskTellSearcher`` proposing each point. Resuming needs only the study:
its sanitized config is a study attr, and trials a killed driver left RUNNING are
failed with a reason and re-queued with the same parameters.
"""

from __future__ import annotations

import contextlib
import json
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

from vlsweep.errors import SweepFailed, SweepInterrupted, UserInputError
from vlsweep.search import study as studies
from vlsweep.search.config import SweepConfig, check_loggers, distributions
from vlsweep.search.searcher import OptunaAskTellSearcher
from vlsweep.spaces import BASELINE, Space

Log = Callable[[str], None]
# A progress line every 10 s while trials run, and when a trial finishes unless one was
# printed in the last 2 s (short trials would otherwise flood the terminal, and each line
# reads the whole study).
PROGRESS_EVERY_SECONDS = 10.0
PROGRESS_MIN_SECONDS = 2.0
# How often the driver renews its claim on the study while it builds the builtin model
# (a claim older than study.HEARTBEAT_STALE_SECONDS may be taken over).
DRIVER_BEAT_SECONDS = 20.0


def sanitized_config(cfg: SweepConfig, base_dir: Path) -> dict[str, Any]:
    """The config as stored on the study: data paths made absolute, no storage URL."""
    from vlsweep.trials.data import DEMO_DATA

    raw = cfg.model_dump(mode="json", exclude={"storage"})
    model = Path(raw["model"]["name_or_path"]).expanduser()
    if not raw["model"]["name_or_path"].startswith("builtin:") and model.exists():
        # A local checkpoint, as the launching shell saw it: resume may run elsewhere.
        raw["model"]["name_or_path"] = str(model.resolve())
    for split in ("train", "val"):
        for src in raw["data"][split]:
            p = src["path"]
            if not p.startswith(DEMO_DATA + "/") and not Path(p).expanduser().is_absolute():
                src["path"] = str((base_dir / p).resolve())
    return raw


def _seed_points(study: optuna.Study, cfg: SweepConfig, space: Space) -> None:
    """Baseline (trial 0) and warm-start points, once, when the study is new."""
    settings = cfg.settings()
    if cfg.search.baseline:
        point = {k: v for k, v in BASELINE.items() if space.active(k, settings, BASELINE)}
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


def progress_line(
    study: optuna.Study,
    names: list[str],
    started: float,
    total: int,
    tune_trials: list[Any] | None = None,
    waiting: str = "",
    held: list[int] | None = None,
) -> str:
    """One line of sweep progress. Finished trials come from the study; running and pending
    ones from Ray Tune (``tune_trials``) when given: an Optuna trial is RUNNING from the
    moment it is asked for, while Ray may still be waiting for resources to start it."""
    trials = study.get_trials(deepcopy=False)  # one read of the study per line
    c = studies.counts(trials)
    done = studies.finished_toward_budget(trials)
    front = studies.pareto_front(study, trials)
    shown = ", ".join(
        "#{} {}".format(
            t.number, " ".join(f"{n}={studies.fmt(v)}" for n, v in zip(names, t.values, strict=True))
        )
        for t in front[:4]
    )
    if tune_trials is None:
        active = f"{c['RUNNING']} running"
    else:
        running = sum(t.status == "RUNNING" for t in tune_trials)
        pending = sum(t.status == "PENDING" for t in tune_trials)
        active = f"{running} running, {pending} pending" + (f" ({waiting})" if pending and waiting else "")
    if held:  # search.reproducible: a free slot waits until these trials have ended
        active += f", 1 slot held (search.reproducible: trial {held[0]} must end first)"
    el = time.time() - started
    return (
        f"[{int(el // 60):02d}:{int(el % 60):02d}] {done}/{total} trials done: "
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, {active}"
        + (f" | front: {shown}" + (" ..." if len(front) > 4 else "") if front else "")
    )


# Ray's resource names for what a trial asks for, and the config keys that set them.
RESOURCE_KEYS = {
    "CPU": "resources.cpus_per_trial",
    "GPU": "resources.gpus_per_trial",
    "memory": "resources.memory_gb_per_trial",
}


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What each trial asks Ray for, in Ray's resource names (memory in bytes)."""
    request = {"CPU": cfg.resources.cpus_per_trial, "GPU": cfg.resources.gpus_per_trial}
    if cfg.resources.memory_gb_per_trial is not None:
        request["memory"] = cfg.resources.memory_gb_per_trial * 2**30
    return {k: v for k, v in request.items() if v > 0}


def describe_resources(resources: dict[str, float], keys: tuple[str, ...] = ("CPU", "GPU", "memory")) -> str:
    parts = []
    for key in keys:
        value = resources.get(key, 0.0)
        if key == "memory":
            parts.append(f"{value / 2**30:.1f} GiB memory")
        else:
            parts.append(f"{value:g} {key}{'' if value == 1 else 's'}")
    return ", ".join(parts)


def autoscaling(cfg: SweepConfig) -> bool:
    """Whether an autoscaler may add nodes to the cluster Ray is connected to."""
    if cfg.ray.autoscaling is not None:
        return cfg.ray.autoscaling
    # Ray has no public call for this; these are the marks its own tools read: the cluster
    # launcher's bootstrap file on the head (what Ray Tune checks), the v2 autoscaler's
    # flag, and the status the v1 autoscaler writes. Every Ray head runs a v1 monitor, a
    # read-only one on a fixed cluster, whose node types are the nodes themselves
    # ("node_<id>"); a real one (KubeRay's, the cluster launcher's) names the node types
    # of its config.
    try:
        from ray.tune.execution.cluster_info import _is_ray_cluster

        if _is_ray_cluster():
            return True
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return True
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        mapping = json.loads(raw).get("autoscaler_report", {}).get("node_type_mapping") or {} if raw else {}
        return any(kind != f"node_{node}" for node, kind in mapping.items())
    except Exception:  # an older or newer Ray without these marks: assume a fixed cluster
        return False


def check_trial_fits(cfg: SweepConfig, log: Log) -> bool:
    """A trial that no node of the cluster can ever hold is an error before any trial
    starts (Ray would keep it pending forever, silently), unless an autoscaler may add
    such a node: then say so and wait. Returns whether trials may wait for an autoscaler."""
    import ray

    request = trial_resources(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]

    scaling = autoscaling(cfg)
    if not request or any(_fits_times(n.get("Resources", {}), request) > 0 for n in nodes):
        return scaling
    keys = tuple(k for k in RESOURCE_KEYS if k in request or k != "memory")
    have = "; ".join(f"{describe_resources(n.get('Resources', {}), keys)}" for n in nodes)
    short = [
        RESOURCE_KEYS[k]
        for k, v in request.items()
        if not any(n.get("Resources", {}).get(k, 0.0) >= v for n in nodes)
    ]
    asked = [RESOURCE_KEYS[k] for k in request]
    what = (
        f"each trial asks for {describe_resources(request, tuple(request))}, but no node of the Ray "
        f"cluster has that{'' if short else ' all at once'} "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {have})"
    )
    if scaling:
        log(f"{what}; the cluster's autoscaler may add such a node: trials wait for it")
        return True
    fix = (
        "lower "
        + " / ".join(short or asked)
        + (" (gpus_per_trial: 0 trains on the CPU)" if "resources.gpus_per_trial" in short else "")
        + ", or run on a cluster with such a node (ray.autoscaling: true if an autoscaler will add one)"
    )
    raise UserInputError(f"{', '.join(short or asked)}: {what}; {fix}")


def _fits_times(node: dict[str, float], request: dict[str, float]) -> int:
    """How many trials a node's resources hold at once. In Ray's own fixed-point units
    (1e-4 of a resource), since float floor division gets 1.0 // 0.2 = 4."""
    return min(round(node.get(k, 0.0) * 10_000) // round(v * 10_000) for k, v in request.items())


def waiting_reason(request: dict[str, float], scaling: bool, active: int) -> str:
    """Why a pending trial is not running yet, for the progress line. ``active`` counts the
    running and pending trials: while the cluster's nodes can hold that many, the pending
    ones are being started (Ray has already reserved what they asked for, so the free
    resources alone would say "waiting")."""
    import ray

    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        free = ray.available_resources()
    except Exception:
        return ""
    room = sum(_fits_times(node, request) for node in nodes) if request else active
    if active <= room:
        return "starting"
    return (
        f"waiting for resources: each asks for {describe_resources(request, tuple(request))}, "
        f"free now {describe_resources(free, tuple(request))}"
        + ("; the autoscaler may add nodes" if scaling else "")
    )


LOCAL_RAY_ATTR = "local_ray"
# Set on the study to ask the running driver to stop cleanly (as Ctrl-C would).
STOP_ATTR = "stop_requested"


def _ray_init(cfg: SweepConfig, address: str | None, log: Log, study: optuna.Study) -> bool:
    """Start (or join) Ray; True when this call started a local Ray that we must stop."""
    import ray

    if ray.is_initialized():
        return False
    # Inside `ray job submit`, the job's cluster is RAY_ADDRESS.
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # A local, single-user Ray: token auth only gets in the way (DESIGN.md, field notes).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        kwargs.update(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
    else:
        kwargs["address"] = address
    log(f"starting Ray ({'local' if address is None else address}) ...")
    ray.init(**kwargs)
    if address is not None:
        return False
    # The local Ray's processes (GCS, raylet, agents) are this driver's children. Some of
    # them outlive a SIGKILLed driver and ignore SIGTERM (DESIGN.md, field notes), so we
    # record them on the study; the next driver of this sweep stops what is left.
    import psutil

    procs = [[p.pid, p.create_time()] for p in psutil.Process().children(recursive=True)]
    record = {"host": socket.gethostname(), "driver_pid": os.getpid(), "procs": procs}
    study.set_user_attr(LOCAL_RAY_ATTR, record)
    return True


def check_shared_storage(cfg: SweepConfig, storage_path: str) -> None:
    """On a cluster of several nodes, Ray Tune's results must go where every node can write
    and the driver can read: a URI, or a path the config declares shared. Said before any
    trial starts."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or cfg.ray.shared_storage or "://" in storage_path:
        return
    raise UserInputError(
        f"ray.storage_path: {storage_path} is a local path, but the Ray cluster has {len(nodes)} "
        "nodes, whose trials would write their results to their own disks; give a URI "
        "(s3://bucket/runs, gs://...), or a path on a mount every node shares and set "
        "ray.shared_storage: true (docs/cluster.md)"
    )


def reap_local_ray(study: optuna.Study, log: Log) -> int:
    """Stop the local Ray processes a dead driver of this sweep left on this host."""
    import psutil

    info = study.user_attrs.get(LOCAL_RAY_ATTR)
    if not info or info.get("host") != socket.gethostname() or psutil.pid_exists(info["driver_pid"]):
        return 0
    left: list[psutil.Process] = []
    for pid, created in info["procs"]:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:  # the same process, not a reused pid
                left += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    study.set_user_attr(LOCAL_RAY_ATTR, None)
    if left:
        log(f"stopped {len(left)} Ray process(es) left by the previous driver (pid {info['driver_pid']})")
    return len(left)


def ensure_model(cfg: SweepConfig, log: Log, beat: Callable[[], None] | None = None) -> None:
    """A builtin model is built before any trial starts, once per machine, with its
    progress shown here: on one machine by this process, on a cluster of several nodes by
    one Ray task on each node that can run a trial (each caches its own copy, unless
    ``$VLSWEEP_CACHE`` is a mount they share). Otherwise every node's first trial would
    build it in a worker whose output nobody sees. ``beat`` is called every
    ``DRIVER_BEAT_SECONDS`` meanwhile, so the driver's claim on the study stays fresh
    through a build of minutes."""
    import ray

    source = cfg.model.name_or_path
    if not source.startswith("builtin:"):
        return
    from vlsweep.trials.builtin import ensure_builtin

    done = threading.Event()

    def beating() -> None:
        while not done.wait(DRIVER_BEAT_SECONDS):
            with contextlib.suppress(Exception):  # a storage hiccup here must not kill the build
                beat()  # type: ignore[misc]

    thread = threading.Thread(target=beating, daemon=True) if beat is not None else None
    if thread is not None:
        thread.start()
    try:
        name = source.removeprefix("builtin:")
        nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
        if len(nodes) <= 1:
            ensure_builtin(name, log=log)
        else:
            request = trial_resources(cfg)
            build_on_nodes(name, [n for n in nodes if _fits_times(n.get("Resources", {}), request) > 0], log)
    finally:
        done.set()
        if thread is not None:
            thread.join()


def build_on_nodes(name: str, nodes: list[dict[str, Any]], log: Log, runtime_env: dict | None = None) -> None:
    """Make sure each of ``nodes`` has builtin:NAME in its cache: one task pinned to each
    (no CPU reserved, so it runs beside whatever holds the node), with a line here every
    ``PROGRESS_EVERY_SECONDS`` until all are done."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from vlsweep.trials.builtin import ensure_builtin

    def build_here() -> tuple[str, list[str]]:
        lines: list[str] = []
        path = ensure_builtin(name, log=lines.append)
        return str(path), lines

    task = ray.remote(num_cpus=0, max_retries=0)(build_here)
    pending = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ref = task.options(scheduling_strategy=strategy, runtime_env=runtime_env).remote()
        pending[ref] = node.get("NodeManagerHostname") or node["NodeID"][:8]
    log(
        f"making sure builtin:{name} is cached on {len(nodes)} node{'' if len(nodes) == 1 else 's'} "
        "(a build is first run only, about 5 min)"
    )
    started = time.time()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=PROGRESS_EVERY_SECONDS)
        for ref in ready:
            where = pending.pop(ref)
            path, lines = ray.get(ref)
            built = [line for line in lines if line.startswith("built ")]
            log(f"  node {where}: {built[0] if built else 'cached'} ({path})")
        if pending:
            log(
                f"  [{time.time() - started:.0f} s] builtin:{name} still building on "
                + ", ".join(sorted(pending.values()))
            )


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
    storage = studies.open_storage(storage_url)
    window = cfg.search.max_concurrent if cfg.search.reproducible else None
    sampler = studies.make_sampler(cfg.search.sampler, cfg.search.seed, window)
    names = [o.name for o in cfg.objectives]
    directions = [o.direction or "minimize" for o in cfg.objectives]
    new_study = cfg.name not in optuna.get_all_study_names(storage)
    study = studies.create_or_check(storage, cfg.name, directions, names, sampler)
    driver = studies.claim_driver(study)
    if study.user_attrs.get(STOP_ATTR):
        study.set_user_attr(STOP_ATTR, None)  # a request meant for an earlier driver
    reap_local_ray(study, log)
    out_root = Path(cfg.output_dir or f"runs/{cfg.name}")
    out_root = (out_root if out_root.is_absolute() else Path.cwd() / out_root).resolve()
    searcher: OptunaAskTellSearcher | None = None
    started_ray = False
    discard = False  # a study this call created, refused before any trial ran: not kept
    try:
        if not resume or not study.user_attrs.get("config"):
            study.set_user_attr("config", sanitized_config(cfg, base_dir))
            study.set_user_attr("vlsweep_version", __version__)
        trials = study.get_trials(deepcopy=False)
        if not trials:
            _seed_points(study, cfg, space)
        requeue_lost(study, log)
        remaining = cfg.search.trials - studies.finished_toward_budget(study.get_trials(deepcopy=False))
        log(
            f"study {cfg.name!r} in {studies.masked(storage_url)}: "
            f"{remaining} of {cfg.search.trials} trials to run"
        )
        if remaining <= 0:
            return study
        started_ray = _ray_init(cfg, address, log, study)
        storage_path = cfg.ray.storage_path or str(out_root / "ray")
        check_shared_storage(cfg, storage_path)
        scaling = check_trial_fits(cfg, log)  # before a build of minutes, not after it
        ensure_model(cfg, log, beat=lambda: studies.heartbeat(study, driver))
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
        )
        started = time.time()
        events = Events(searcher, study, driver, names, started, cfg.search.trials, log)
        events.request, events.scaling = request, scaling
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
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
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
        studies.release_driver(study, driver)
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
    here = os.environ.get(studies.STORAGE_ENV)
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
            f"--storage {studies.masked(storage_url)}: with --address ray://..., the sweep's driver runs on "
            "the cluster, which must reach the study: use a PostgreSQL storage (see docs/cluster.md)"
        )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    log(f"connecting to {address} (Ray Client); the sweep's driver runs on the head node ...")
    for attempt in range(3):
        try:
            ray.init(address=address, log_to_driver=True, logging_level="ERROR")
            break
        except ConnectionError as err:
            # The client server starts a server per session; that start can fail while an
            # earlier session's one is still shutting down. Twice more, as a user would.
            if attempt == 2:
                msg = f"--address {address}: cannot connect through Ray Client ({err})"
                raise UserInputError(msg) from None
            log(f"Ray Client connection failed ({str(err).strip().splitlines()[-1][:200]}); retrying in 5 s")
            time.sleep(5)
    try:
        sanitized = studies.strip_password(storage_url)
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
        study = studies.load_existing(storage_url, name)
    except UserInputError:
        return  # the driver never created the study
    study.set_user_attr(STOP_ATTR, {"host": socket.gethostname(), "at": time.time()})
    deadline = time.time() + seconds
    while study.user_attrs.get("driver") and time.time() < deadline:
        time.sleep(0.5)


def rung_steps(cfg: SweepConfig) -> list[int]:
    """The rungs early stopping judges trials at (none without early stopping)."""
    from vlsweep.search.moasha import rungs

    if cfg.search.early_stopping == "none":
        return []
    return rungs(grace_steps(cfg), cfg.search.reduction_factor, cfg.budget.steps)


def grace_steps(cfg: SweepConfig) -> int:
    return cfg.search.grace_steps or max(1, cfg.budget.steps // cfg.search.reduction_factor**2)


def make_scheduler(cfg: SweepConfig, names: list[str], directions: list[str]) -> Any:
    """The Ray Tune scheduler ``search.early_stopping`` names (None: run every trial to the end)."""
    modes = ["min" if d == "minimize" else "max" for d in directions]
    if cfg.search.early_stopping == "mo-asha":
        from vlsweep.search.moasha import MOASHAScheduler

        return MOASHAScheduler(
            metrics=names,
            modes=modes,
            max_t=cfg.budget.steps,
            grace_period=grace_steps(cfg),
            reduction_factor=cfg.search.reduction_factor,
        )
    if cfg.search.early_stopping == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="steps",
            metric=names[0],
            mode=modes[0],
            max_t=cfg.budget.steps,
            grace_period=grace_steps(cfg),
            reduction_factor=cfg.search.reduction_factor,
        )
    return None


def _trial_name(trial: Any) -> str:
    """Ray trial names and directories say which Optuna trial they ran."""
    return f"trial-{int(trial.config.get('optuna_trial', -1)):04d}-{trial.trial_id}"


def logger_callbacks(cfg: SweepConfig) -> list[Callback]:
    """Ray Tune's own logger callbacks for the trials' training curves, as the config asks."""
    check_loggers(cfg)
    out: list[Callback] = []
    if cfg.logging.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        out.append(TBXLoggerCallback())
    if cfg.logging.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(
            MLflowLoggerCallback(
                tracking_uri=cfg.logging.mlflow.tracking_uri,
                experiment_name=cfg.logging.mlflow.experiment_name or cfg.name,
            )
        )
    if cfg.logging.wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(
            WandbLoggerCallback(project=cfg.logging.wandb.project or cfg.name, group=cfg.logging.wandb.group)
        )
    return out


class Events(Callback):
    """Driver-side hooks: Ray's error text onto failed trials, heartbeat, progress lines."""

    def __init__(
        self,
        searcher: OptunaAskTellSearcher,
        study: optuna.Study,
        driver: str,
        names: list[str],
        started: float,
        total: int,
        log: Log,
    ):
        self.searcher, self.study, self.driver, self.names = searcher, study, driver, names
        self.started, self.total, self.log = started, total, log
        self.last = 0.0
        self.last_line = ""
        self.restarts: dict[str, int] = {}
        self.tune_trials: list[Any] | None = None
        self.request: dict[str, float] = {}
        self.scaling = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Where Tune's loggers write this trial's curves (TensorBoard event files).
        self.searcher.note(trial.trial_id, "log_dir", str(trial.path))

    # Tune pickles its callbacks into tuner.pkl; a study would carry its storage URL, and
    # with it any password. Nothing here is needed to restore a sweep (the study is).
    def __getstate__(self) -> dict[str, Any]:
        return {"names": self.names, "total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray restarts the trial (resources.retries) after its worker died: same Optuna trial.
        self.restarts[trial.trial_id] = self.restarts.get(trial.trial_id, 0) + 1
        self.searcher.note(trial.trial_id, "worker_restarts", self.restarts[trial.trial_id])
        self.log(f"trial {trial.config.get('optuna_trial')}: its Ray worker died; restarting it")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = "the Ray worker failed"
        err = trial.get_error()
        if err is not None:
            message = f"the Ray worker failed: {str(err).strip().splitlines()[-1]}"
        self.searcher.fail(trial.trial_id, message)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tune_trials = trials
        self._tick(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.tune_trials = trials
        self._tick()

    def _tick(self, force: bool = False) -> None:
        now = time.time()
        if now - self.last >= (PROGRESS_MIN_SECONDS if force else PROGRESS_EVERY_SECONDS):
            self.last = now
            studies.heartbeat(self.study, self.driver)
            trials = self.tune_trials or []
            pending = any(t.status == "PENDING" for t in trials)
            active = sum(t.status in ("PENDING", "RUNNING") for t in trials)
            waiting = waiting_reason(self.request, self.scaling, active) if pending else ""
            self.last_line = progress_line(
                self.study,
                self.names,
                self.started,
                self.total,
                self.tune_trials,
                waiting,
                self.searcher.holding,
            )
            self.log(self.last_line)
