"""vlsweep.trials.pool: a pool whose processes load a base and its data once for every job,
and the one-at-a-time cache a sweep's worker keeps between trials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.helpers import train_config
from vlsweep.config import TrainConfig
from vlsweep.trials import base_pool, cached_base, cached_data, pooled
from vlsweep.trials import pool as pool_module


def _what_the_job_sees(name: str) -> dict:
    """A pool job (at the top of an importable module, as base_pool asks)."""
    import torch

    loaded = pooled(name)
    return {
        "pid": os.getpid(),
        "base": id(loaded.base),
        "model": loaded.cfg.model.name_or_path,
        "train": len(loaded.data.train),
        "threads": torch.get_num_threads(),
    }


@pytest.mark.slow  # a spawned process imports torch and loads the base: about 12 s
def test_each_process_loads_the_base_once_and_every_job_runs_against_it(tiny_checkpoint, demo_data):
    cfg = TrainConfig.model_validate(train_config(tiny_checkpoint("qwen2_vl"), demo_data))
    with base_pool({"tiny": (cfg, Path("."))}, workers=1) as pool:
        first, second = pool.map(_what_the_job_sees, ["tiny", "tiny"])
    assert first == second  # one process, the same loaded base object
    assert first["model"] == cfg.model.name_or_path and first["train"] == 24
    assert first["threads"] == 1 and first["pid"] != os.getpid()


def test_pooled_outside_a_pool_names_what_to_do():
    with pytest.raises(LookupError, match="no such setup.*none: it is no process of a base_pool"):
        pooled("tiny")


def test_the_cache_keeps_one_base_and_one_dataset_at_a_time(monkeypatch):
    loads: list[str] = []
    monkeypatch.setattr(pool_module, "load_base", lambda cfg: loads.append(cfg.name_or_path) or object())
    monkeypatch.setattr(
        pool_module, "load_data", lambda cfg, base_dir: loads.append(str(base_dir)) or object()
    )
    monkeypatch.setattr(pool_module, "_BASE", {})
    monkeypatch.setattr(pool_module, "_DATA", {})
    cfg = TrainConfig.model_validate(train_config("model-a", Path("data")))
    other = cfg.model.model_copy(update={"name_or_path": "model-b"})

    first = cached_base(cfg.model)
    assert cached_base(cfg.model.model_copy()) is first  # an equal config: kept
    assert cached_base(other) is not first and cached_base(cfg.model) is not first  # one at a time
    data = cached_data(cfg.data, Path("."))
    assert cached_data(cfg.data, Path(".")) is data
    assert cached_data(cfg.data, Path("elsewhere")) is not data
    assert loads == ["model-a", "model-b", "model-a", ".", "elsewhere"]
