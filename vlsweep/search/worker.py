"""What runs inside a Ray worker: one trial of the sweep, through the trial engine.

With ``reuse_actors`` a worker process runs many trials; the loaded base model and the
dataset are kept between them (``vlsweep.trials.cached_base`` and ``cached_data``, keyed
by their config), and ``run_trial`` attaches a fresh LoRA per trial and removes it
(restoring any fully trained module) before returning, so no trained weight reaches the
next trial.

A trial on several train workers (``resources.train_workers``) runs
``vlsweep.search.train_workers.run`` instead, which starts a Ray Train run whose ranks
each run ``_train`` here on their share of the batch.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from vlsweep.config import SPLITS
from vlsweep.errors import QUANTIZE_HINT

# This process's working directory when Ray started it, before Ray Tune moves each trial
# into its own directory. Under `ray job submit --working-dir`, it is this node's copy of
# the job's files.
_START_DIR = os.getcwd()

# The result key a trial-level failure is reported under (the searcher tells FAIL with it).
ERROR_KEY = "vlsweep_error"
# The result key a multi-worker trial says a rank died under, before Tune retries or fails it.
DIED_KEY = "vlsweep_worker_died"
# The result keys of a checkpoint made (its step) and of a trial continued from one.
CHECKPOINT_KEY = "vlsweep_checkpoint_step"
RESUMED_KEY = "vlsweep_resumed_from_step"


def localize(path: str, driver_dir: str | None, start_dir: str | None = None) -> str:
    """A path as the driver resolved it, as this node sees it.

    A path this node can read is used as is (one machine, a shared mount). A path inside
    the driver's working directory that this node cannot see is looked up in this node's
    own copy of that directory (``ray job submit --working-dir`` ships the directory to
    every node, each under its own temporary path)."""
    if not driver_dir or Path(path).exists():
        return path
    try:
        rel = Path(path).relative_to(driver_dir)
    except ValueError:
        return path
    here = Path(start_dir or _START_DIR) / rel
    return str(here) if here.exists() else path


def _localized(
    trial_spec: dict[str, Any], base_dir: str, driver_dir: str | None
) -> tuple[dict[str, Any], str]:
    trial_spec = json.loads(json.dumps(trial_spec))
    for split in SPLITS:
        for src in trial_spec["data"].get(split, []):
            if Path(src["path"]).is_absolute():
                src["path"] = localize(src["path"], driver_dir)
    model = trial_spec["model"]["name_or_path"]
    if Path(model).is_absolute():
        trial_spec["model"]["name_or_path"] = localize(model, driver_dir)
    return trial_spec, localize(base_dir, driver_dir)


def run(
    config: dict[str, Any],
    *,
    trial_spec: dict[str, Any],
    base_dir: str,
    out_root: str,
    threads: int,
    driver_dir: str | None = None,
    artifact_store: str | None = None,
) -> None:
    """Ray Tune function trainable: ``config`` is what the searcher suggested, ``trial_spec``
    the sweep's trial spec (the train config every trial runs, as JSON). Where the trial runs,
    the trial itself, then its final report, or its failure. (A trial on several train
    workers runs ``vlsweep.search.train_workers.run`` instead.)"""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, threads))
    # The trial's CPU time as the sweep pays it: a first trial in this worker loads the base.
    cpu0 = time.process_time()
    reports = _Reports({**_placement(), "world_size": 1})
    resume = _last_checkpoint()
    reports.steps = resume["step"] if resume else 0
    # Where the trial runs, at once (the driver tells a lost node by it), and whether it
    # continues from a checkpoint.
    reports.send({**reports.placement, **({RESUMED_KEY: resume["step"]} if resume else {})})
    trial_dir = Path(out_root) / f"trial-{int(config['optuna_trial']):04d}"
    result: dict[str, Any] = {}
    failure: str | None = None
    try:
        result = _train(config, trial_spec, base_dir, driver_dir, trial_dir, reports, resume=resume)
    except Exception as exc:  # a trial-level failure: recorded on the trial, not retried
        failure = describe_failure(exc)
    if failure is not None:
        # Out of the handler, the error and the trial's tensors its frames held are gone:
        # free what they used, so the next trial in this (reused) worker starts clean.
        release_memory()
        spent = time.process_time() - cpu0
        tune.report({ERROR_KEY: failure, **reports.placement, "steps": reports.steps, "cpu_seconds": spent})
        return
    # The engine reported each evaluation; a final report carries the run's timings and
    # the metadata of the files stored for the driver to link to the Optuna trial.
    final: dict[str, Any] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    final["cpu_seconds"] = time.process_time() - cpu0
    if artifact_store is not None:
        final.update(_store_files(artifact_store, trial_dir, _file_key(config)))
    tune.report({**final, **reports.placement, "steps": result["steps"]})


def _placement() -> dict[str, Any]:
    """Where the trial runs, recorded on the Optuna trial: the node, the worker's pid (a
    reused actor keeps it), and the GPUs Ray gave this worker (it sets CUDA_VISIBLE_DEVICES
    to them, so torch's "cuda" is the first of them: trials sharing a GPU show the same)."""
    import ray

    placement: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_pid": os.getpid(),
    }
    gpus = ray.get_gpu_ids()
    if gpus:
        placement["gpu_ids"] = ",".join(str(g) for g in gpus)
    return placement


class _Reports:
    """What a trial reports to Tune: each evaluation (``report``) and, as results without
    objectives, which schedulers skip, its training curves (``log_row``: at most ~50 per
    trial, for Tune's loggers). Each carries where the trial runs.

    ``send`` is how a result leaves: ``tune.report`` in a trial actor; on the ranks of a
    multi-worker trial, ``ray.train.report``, which every rank calls at the same points
    (a barrier in Ray Train) and whose main rank's result reaches Tune."""

    def __init__(self, placement: dict[str, Any], send: Any = None):
        self.placement = placement
        self.steps = 0  # the last step reported
        self.every = 1  # a curve row reported every this many rows
        self._rows = 0
        self._send = send

    def send(self, result: dict[str, Any], checkpoint: Any = None) -> None:
        if self._send is not None:
            self._send(result)
            return
        from ray import tune

        tune.report(result, checkpoint=checkpoint)

    def checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """The trial's state after ``step`` as a Ray Tune checkpoint (copied by Tune into
        ``ray.storage_path``; a trial run again gets it from ``tune.get_checkpoint``)."""
        import tempfile

        from ray import tune

        from vlsweep.trials import save_checkpoint

        try:
            with tempfile.TemporaryDirectory(prefix="vlsweep-checkpoint-") as tmp:
                save_checkpoint(state, Path(tmp))
                result = {**self.placement, "steps": step, CHECKPOINT_KEY: step}
                self.send(result, checkpoint=tune.Checkpoint.from_directory(tmp))
        except Exception as exc:  # storage full or unreachable: the trial trains on without it
            reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]
            print(f"warning: trial checkpoint at step {step} not kept: {reason}", file=sys.stderr, flush=True)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.steps = step
        self.send({**metrics, **self.placement, "steps": step})

    def log_row(self, row: dict[str, Any]) -> None:
        self._rows += 1
        # When the fine-tune itself began training (its first step done), as Unix time:
        # after the worker's start, the model load and the encoding of the data.
        self.placement.setdefault("train_started", time.time())
        if (self._rows - 1) % self.every == 0:
            curves = {f"train/{k}": v for k, v in row.items() if k != "step"}
            self.send({**curves, **self.placement, "steps": row["step"]})


def _train(
    config: dict[str, Any],
    trial_spec: dict[str, Any],
    base_dir: str,
    driver_dir: str | None,
    trial_dir: Path,
    reports: _Reports,
    ranks: Any = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One trial through the engine, on the base and data this worker keeps between
    trials (loaded again only when the sweep's model or data differ). ``ranks``: this
    process among a multi-worker trial's train workers; only the main one writes files."""
    from vlsweep import demo
    from vlsweep.config import TrainConfig
    from vlsweep.params import TrialParams
    from vlsweep.trials import cached_base, cached_data, run_trial

    trial_spec, base_dir = _localized(trial_spec, base_dir, driver_dir)
    # A builtin model is resolved to the weights shipped in this node's vlsweep.
    cfg = demo.resolve(TrainConfig.model_validate(trial_spec))
    params = TrialParams.of(config["params"])
    model_cfg = cfg.model if ranks is None or not ranks.sharded else load_for_sharding(cfg.model)
    base = cached_base(model_cfg)
    data = cached_data(cfg.data, Path(base_dir))
    # The engine logs a row every 10 steps and at each evaluation.
    reports.every = max(1, cfg.budget.steps // 10 // 50)
    return run_trial(
        params,
        cfg.budget,
        reports.report,
        cfg=cfg,
        data=data,
        base=base,
        output_dir=trial_dir if ranks is None or ranks.main else None,
        on_log_row=reports.log_row,
        ranks=ranks,
        on_checkpoint=reports.checkpoint if ranks is None else None,
        resume=resume,
    )


def _last_checkpoint() -> dict[str, Any] | None:
    """The state of the trial's last checkpoint when Tune runs it again (None: a first run,
    or no checkpoint made yet)."""
    from ray import tune

    from vlsweep.trials import load_checkpoint

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory))
    except Exception as exc:  # unreadable (storage, or another vlsweep's layout): start over
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]
        print(
            f"warning: the trial's checkpoint could not be read ({reason}); it starts from step 0",
            file=sys.stderr,
        )
        return None


def _file_key(config: dict[str, Any]) -> str:
    """What names this trial's stored files (``artifacts.file_id``): the same on every run
    of the trial, so a run again after a lost node writes over, never beside, what an
    interrupted one had begun to store."""
    from ray import tune

    context = tune.get_context()
    return artifacts_key(context.get_experiment_name(), context.get_trial_id(), int(config["optuna_trial"]))


def artifacts_key(experiment: str, ray_trial_id: str, number: int) -> str:
    return f"{experiment}/{ray_trial_id}/{number}"


def load_for_sharding(model: Any) -> Any:
    """The model config a sharded trial's rank loads its base with: on the CPU (each unit
    moves to the trial's device as FSDP shards it; the whole base never sits on one GPU),
    in the dtype the trial's device computes in."""
    from vlsweep.trials import resolve_device, resolve_dtype

    dtype = resolve_dtype(model.dtype, resolve_device(model.device))
    return model.model_copy(update={"device": "cpu", "dtype": str(dtype).removeprefix("torch.")})


def _store_files(store_url: str, trial_dir: Path, key: str) -> dict[str, str]:
    """Write the trial's files into the sweep's artifact store. A store this node cannot
    write costs the trial its stored files, not its result: the reason is reported."""
    from vlsweep import artifacts

    try:
        metas = artifacts.write_trial_files(artifacts.open_store(store_url), trial_dir, key)
    except Exception as exc:
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return {artifacts.ERROR_KEY: f"on node {socket.gethostname()}: {reason}"[-1000:]}
    return {artifacts.RESULT_KEY: json.dumps(metas)}


def release_memory() -> None:
    """Free what a finished trial's tensors held: Python's cycles, and torch's cached GPU
    blocks (which another process sharing the GPU could not use otherwise)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_failure(exc: BaseException) -> str:
    """The reason a trial failed, as recorded on the Optuna trial (``error`` user attr).

    An out-of-memory error says where it happened (when the engine knows: the step and the
    batch) and what to change.
    """
    import torch

    from vlsweep.errors import TrialOutOfMemory, UserInputError

    tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, (UserInputError, FileNotFoundError, PermissionError)):
        # A model or data path this worker cannot read: say which machine could not.
        return f"on node {socket.gethostname()} ({_START_DIR}): {tail}"
    if isinstance(exc, TrialOutOfMemory):
        return str(exc)
    oom = isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
    if not oom:
        return tail
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (
        f"out of memory: {first} (lower budget.batch_size or budget.eval_batch_size, set "
        f"model.gradient_checkpointing: true, {QUANTIZE_HINT}, give each trial a larger share of "
        "a GPU with resources.gpus_per_trial, up to 1, or spread it over GPUs with "
        "resources.train_workers (strategy: fsdp shards the model too; docs/cluster.md))"
    )
