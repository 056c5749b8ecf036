"""Loading a base model and its data once per process, for the many trials run against them.

``base_pool`` is a pool of processes for running many short trials on one machine (what
the benchmarks do): each process loads every setup it is given (a trial config: its base
model and its data) before its first job, and a job reads them with ``pooled(name)`` to
pass to ``run_trial``, which attaches a fresh adapter per trial and removes it after.

``cached_base`` and ``cached_data`` keep what a long-lived process that runs one trial
after another (a sweep's Ray worker) loaded last, for its next trial on the same config.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import TypeVar

from vlsweep.config import DataConfig, ModelConfig, TrainConfig
from vlsweep.trials.engine import TrialData, load_data
from vlsweep.trials.modeling import Base, load_base

T = TypeVar("T")


@dataclass(frozen=True)
class Loaded:
    """One setup of a ``base_pool`` as its processes hold it."""

    cfg: TrainConfig
    base: Base
    data: TrialData


# In a process of a base_pool: every setup of the pool, by name.
_POOLED: dict[str, Loaded] = {}


def base_pool(setups: Mapping[str, tuple[TrainConfig, Path]], *, workers: int) -> Pool:
    """A pool of ``workers`` processes with one torch thread each, each of which loads every
    setup once before its first job. ``setups``: a name -> the trial config (builtin names
    already resolved, ``vlsweep.demo.resolve``) and the directory its data paths are
    relative to. A job reads what its process loaded with ``pooled(name)``; it is sent to
    the processes by reference, so it must be a function at the top of a module they can
    import (the script that was run counts). Close it with ``with base_pool(...) as pool:``.

    The processes are spawned, not forked: a forked child would inherit the parent's torch
    and Ray state, threads included, and can hang in them."""
    if workers < 1:
        raise ValueError(f"base_pool: `workers >= 1` must hold, but got {workers=}")
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_load, initargs=(dict(setups),))


def _load(setups: dict[str, tuple[TrainConfig, Path]]) -> None:
    import torch

    # The pool's processes share the machine's cores: one thread each, none waiting on another.
    torch.set_num_threads(1)
    for name, (cfg, base_dir) in setups.items():
        _POOLED[name] = Loaded(cfg, load_base(cfg.model), load_data(cfg.data, base_dir))


def pooled(name: str) -> Loaded:
    """In a job run by ``base_pool``: setup ``name`` as this process loaded it."""
    try:
        return _POOLED[name]
    except KeyError:
        have = ", ".join(map(repr, _POOLED)) or "none: it is no process of a base_pool"
        raise LookupError(
            f"pooled({name!r}): no such setup in this process (it holds {have}); "
            "name a setup given to base_pool"
        ) from None


# What a long-lived process loaded last: one base and one dataset at a time.
_BASE: dict[str, Base] = {}
_DATA: dict[str, TrialData] = {}


def cached_base(cfg: ModelConfig) -> Base:
    """``load_base(cfg)``, kept in this process for the next call with an equal config; a
    call with another config drops the kept base first, so one base is in memory at a time."""
    return _kept(_BASE, cfg.model_dump_json(), lambda: load_base(cfg))


def cached_data(cfg: DataConfig, base_dir: Path) -> TrialData:
    """``load_data(cfg, base_dir)``, kept as ``cached_base`` keeps a base."""
    key = json.dumps([cfg.model_dump(mode="json"), str(base_dir)], sort_keys=True)
    return _kept(_DATA, key, lambda: load_data(cfg, base_dir))


def _kept(cache: dict[str, T], key: str, make: Callable[[], T]) -> T:
    if key not in cache:
        cache.clear()  # before loading the next: both would be in memory at once
        cache[key] = make()
    return cache[key]
