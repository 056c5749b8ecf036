"""Trials on the GPUs Ray assigns, without a GPU: a local Ray told it has one GPU
(``ray.num_gpus: 1``) hands out GPU ids and sets CUDA_VISIBLE_DEVICES in each worker as
it would on a GPU machine; torch, finding no CUDA driver, trains on the CPU. What runs on
a real GPU (mixed precision, peak memory) is in the ``gpu``-marked tests.

Run with ``pytest -m integration`` (CI does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep

pytestmark = pytest.mark.integration


def _meeting_worker(folder: Path, expected: int):
    """The real worker, once every trial of the sweep has started: each writes what Ray
    gave it, then waits for the others, so the trials provably share the GPU at once. A
    closure, so Ray ships it by value."""

    def run(config, **kwargs):
        import time

        import ray

        from vlsweep.search import worker

        seen = {
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        (folder / f"trial-{config['optuna_trial']}.json").write_text(json.dumps(seen))
        deadline = time.time() + 120
        while len(list(folder.glob("trial-*.json"))) < expected:
            if time.time() > deadline:
                raise RuntimeError("the other trial never started beside this one")
            time.sleep(0.2)
        worker.run(config, **kwargs)

    return run


def test_two_half_gpu_trials_share_one_gpu_each_on_the_device_ray_assigned(
    tmp_path, tiny_checkpoint, demo_data
):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=2, max_concurrent=2)
    edit_yaml(
        path,
        budget={"steps": 2},
        resources={"cpus_per_trial": 1, "gpus_per_trial": 0.5},
        ray={"num_gpus": 1, "num_cpus": 2},
    )
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    met = tmp_path / "met"
    met.mkdir()
    run_sweep(cfg, base_dir, url, worker_fn=_meeting_worker(met, 2), log=lambda _m: None)
    trials = optuna.load_study(study_name="t", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("error") for t in trials]
    seen = [json.loads(p.read_text()) for p in sorted(met.glob("trial-*.json"))]
    # Both on GPU 0, each worker's CUDA_VISIBLE_DEVICES set to it by Ray: torch's "cuda"
    # (cuda:0) would be that GPU.
    assert seen == [{"gpu_ids": ["0"], "cuda": "0"}] * 2, seen
    assert [t.user_attrs["gpu_ids"] for t in trials] == ["0", "0"]
    # No CUDA here: no peak GPU memory is claimed.
    assert all("peak_gpu_memory_gb" not in t.user_attrs for t in trials)
