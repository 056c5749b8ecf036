"""A trial on several train workers: a Ray Train run inside the Tune trial.

This is Ray's own recipe for tuning distributed runs (Train V2, "Hyperparameter Tuning
with Ray Tune"): the Tune trial's function starts a ``TorchTrainer`` with a
``ScalingConfig`` of ``resources.train_workers`` workers, each with the per-worker share
of ``cpus_per_trial`` / ``gpus_per_trial`` / ``memory_gb_per_trial``, and Ray Train's
``TuneReportCallback`` hands the main rank's reports to Tune, where the searcher and
MO-ASHA see them as any trial's. Ray Train starts the process group (gloo on CPUs, NCCL
on GPUs); the engine wraps the model in torch's DistributedDataParallel. Nothing here is
distributed machinery of our own.

Failures, classed once: an exception a rank raises (NaN, out of memory, bad input), or
Ray Train's controller's own error, is the trial's error, reported as such (FAIL, not
retried); a rank whose process dies, or a node of the run preempted, makes Ray Train's
run fail with that, which this function raises again so that Tune retries the whole
trial, up to ``resources.retries``. Ray Train's own retries are off (``max_failures``
and ``max_preemption_failures`` 0): a failure is counted once, by Tune.

The trial's actor holds nothing between trials: the base is loaded by each rank for
each trial (the sweep turns ``reuse_actors`` off; docs/cluster.md gives the reload's cost).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vlsweep.search.config import SweepConfig

# Ray's resource names, as ScalingConfig's resources_per_worker takes them.
_WORKER_KEYS = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def scaling(cfg: SweepConfig, storage_path: str) -> dict[str, Any] | None:
    """What ``worker.run`` needs to run each trial on ``resources.train_workers`` workers
    (None for one: the trial actor trains itself)."""
    res = cfg.resources
    if res.train_workers == 1:
        return None
    per_worker: dict[str, float] = {"CPU": res.cpus_per_trial}
    if res.gpus_per_trial:
        per_worker["GPU"] = res.gpus_per_trial
    if res.memory_gb_per_trial is not None:
        per_worker["memory"] = res.memory_gb_per_trial * 2**30
    return {
        "num_workers": res.train_workers,
        "resources_per_worker": per_worker,
        "strategy": res.strategy,
        "storage_path": storage_path,
    }


def run(
    config: dict[str, Any],
    *,
    trial_spec: dict[str, Any],
    base_dir: str,
    out_root: str,
    threads: int,
    driver_dir: str | None,
    artifact_store: str | None,
    num_workers: int,
    resources_per_worker: dict[str, float],
    strategy: str,
    storage_path: str,
) -> None:
    """The Tune trial's function for a multi-worker trial: start the Ray Train run and wait.

    Its ranks report to Tune themselves; a trial error is reported here (the searcher
    records it as FAIL); a rank's death is raised for Tune to retry."""
    from ray import train, tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from vlsweep.search import worker
    from vlsweep.search.worker import DIED_KEY, ERROR_KEY

    tune.report({"world_size": num_workers})  # at once: the driver may stop a doomed re-run here
    use_gpu = resources_per_worker.get("GPU", 0) > 0
    # A run of its own per attempt: Tune's retry must not resume the dead attempt's run.
    name = f"{tune.get_context().get_trial_name()}-train-{time.time_ns()}"
    trainer = TorchTrainer(
        rank_main,
        train_loop_config={
            "config": config,
            "trial_spec": trial_spec,
            "base_dir": base_dir,
            "out_root": out_root,
            "threads": threads,
            "driver_dir": driver_dir,
            "artifact_store": artifact_store,
            "file_key": worker._file_key(config),
            "strategy": strategy,
        },
        scaling_config=train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # Ray's V2 callback
            # Ray Train re-runs nothing once the workers started, not even after a
            # preemption (by default it would, without limit, inside this trial): Tune
            # counts every re-run. Starting the workers it retries as it does by default
            # (controller_failure_limit): that is how a trial waits for an added node.
            failure_config=train.FailureConfig(  # type: ignore[call-arg]  # Train V2's (the stub is V1's)
                max_failures=0, max_preemption_failures=0
            ),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        died = rank_died(exc)
        if died is not None:
            reason = f"a train worker of this trial died: {died}"
            tune.report({DIED_KEY: reason, "world_size": num_workers})  # the reason, for the study
            raise RuntimeError(reason) from None
        tune.report({ERROR_KEY: trial_error(exc), "world_size": num_workers})


def rank_died(exc: BaseException) -> str | None:
    """Why a process of the Ray Train run died, when that is what ended it: a rank, a
    node preempted, or Ray Train's controller itself (None: a rank raised an error of the
    trial's own, or the controller failed on its own, e.g. a callback)."""
    import ray.exceptions
    from ray.train import WorkerGroupError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.RaySystemError)):
        return f"Ray Train's controller: {type(exc).__name__}: {first}"  # OOM-killed, node lost
    if type(exc).__name__ == "PreemptionError":  # (ray.train.v2.api.exceptions, Ray 2.60)
        return first
    if not isinstance(exc, WorkerGroupError):  # the controller's own error: the trial's
        return None
    # The other ranks fail too, on their next collective (gloo: "Connection reset by
    # peer"): the dead one is the rank Ray Train found so.
    for rank, err in sorted(exc.worker_failures.items()):
        if isinstance(err, _death_types()):
            return f"rank {rank}: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
    return None


def _death_types() -> tuple[type[BaseException], ...]:
    """What Ray reports for a rank whose process died: an actor error, or Ray Train's
    failed health check (which Ray 2.60 defines in an internal module only)."""
    import ray.exceptions

    types: tuple[type[BaseException], ...] = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
    try:
        from ray.train.v2._internal.exceptions import (
            WorkerHealthCheckFailedError,
            WorkerHealthCheckTimeoutError,
        )
    except ImportError:  # another Ray: its actor errors still count
        return types
    return (*types, WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError)


def trial_error(exc: BaseException) -> str:
    """The reason a rank gave for failing the trial, as a one-worker trial records it."""
    from ray.train import WorkerGroupError

    from vlsweep.search.worker import describe_failure

    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        rank, err = sorted(exc.worker_failures.items())[0]
        cause = getattr(err, "cause", None)
        return f"rank {rank}: {describe_failure(cause if isinstance(cause, BaseException) else err)}"
    return describe_failure(exc)


def rank_main(loop: dict[str, Any]) -> None:
    """One rank of a multi-worker trial (Ray Train's ``train_loop_per_worker``): the engine
    on this rank's share of each batch, every report made on every rank at the same steps,
    the main rank's carrying the metrics, where each rank runs and the stored files."""
    import torch
    from ray import train

    from vlsweep.search import worker
    from vlsweep.trials import Ranks

    torch.set_num_threads(max(1, int(loop["threads"])))
    cpu0 = time.process_time()
    ranks = Ranks.current(loop["strategy"])
    here = {**worker._placement(), "rank": ranks.rank}
    everyone = ranks.gather(here)
    placement: dict[str, Any] = (
        {k: v for k, v in here.items() if k != "rank"}
        | {"world_size": ranks.world, "rank_placement": json.dumps(everyone)}
        if ranks.main
        else {}
    )

    def send(result: dict[str, Any]) -> None:
        train.report(result if ranks.main else {})

    reports = worker._Reports(placement, send=send)
    config = loop["config"]
    trial_dir = Path(loop["out_root"]) / f"trial-{int(config['optuna_trial']):04d}"
    result = worker._train(
        config, loop["trial_spec"], loop["base_dir"], loop["driver_dir"], trial_dir, reports, ranks
    )
    spent = sum(ranks.gather(time.process_time() - cpu0))  # the trial's CPU over all ranks
    final: dict[str, Any] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    final["cpu_seconds"] = spent
    if ranks.main and loop["artifact_store"] is not None:
        final.update(worker._store_files(loop["artifact_store"], trial_dir, loop["file_key"]))
    send({**final, **reports.placement, "steps": result.get("steps", reports.steps)})
