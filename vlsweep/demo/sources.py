"""Builtin names in configs, made concrete: ``builtin:NAME`` models (shipped weights) and
the ``builtin:demo`` dataset (written into the cache on first use), as paths the engine
loads."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, TypeVar

from vlsweep.cache import cache_dir
from vlsweep.config import BUILTIN, DEMO_DATA, DataConfig, ModelConfig, RunConfig
from vlsweep.demo.synth import write_dataset

# Bumped when the generator changes: a new cache entry, old ones are never read.
DEMO_DATA_VERSION = 5
Run = TypeVar("Run", bound=RunConfig)


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """The model config with a builtin name replaced by its shipped checkpoint directory
    (checked against its checksums); any other name is returned as it is."""
    if not cfg.name_or_path.startswith(BUILTIN):
        return cfg
    from vlsweep.demo.builtin import builtin_checkpoint

    path = builtin_checkpoint(cfg.name_or_path.removeprefix(BUILTIN))
    return cfg.model_copy(update={"name_or_path": str(path)})


def demo_data_dir(seed: int = 0) -> Path:
    """The synthetic demo dataset, written on first use into the cache (deterministic)."""
    out = cache_dir() / "data" / f"demo-v{DEMO_DATA_VERSION}-seed{seed}"
    if not (out / "val.jsonl").is_file():
        # Not from the random module: every trial seeds it alike.
        tmp = out.with_name(out.name + f".tmp{uuid.uuid4().hex}")
        write_dataset(tmp, seed=seed)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_data(cfg: DataConfig) -> DataConfig:
    """The data config with ``builtin:demo/SPLIT`` paths replaced by the cached files."""
    prefix = DEMO_DATA + "/"
    if not any(s.path.startswith(prefix) for s in (*cfg.train, *cfg.val, *cfg.retain)):
        return cfg

    def local(sources: list[Any]) -> list[Any]:
        return [
            s.model_copy(update={"path": str(demo_data_dir() / f"{s.path.removeprefix(prefix)}.jsonl")})
            if s.path.startswith(prefix)
            else s
            for s in sources
        ]

    return cfg.model_copy(
        update={"train": local(cfg.train), "val": local(cfg.val), "retain": local(cfg.retain)}
    )


def resolve(cfg: Run) -> Run:
    """A run config the engine can load: its builtin model and data made concrete."""
    return cfg.model_copy(update={"data": resolve_data(cfg.data), "model": resolve_model(cfg.model)})
