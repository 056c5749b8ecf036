"""Builtin names in configs, made concrete: ``builtin:NAME`` models (shipped weights) and
the ``builtin:demo`` dataset (written into the cache on first use), as paths the engine
loads."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, TypeVar

from vlsweep.cache import cache_dir
from vlsweep.config import BUILTIN, DEMO_DATA, DataConfig, ModelConfig, RunConfig
from vlsweep.demo.synth import write_dataset
from vlsweep.errors import UserInputError

# Bumped when the generator changes: a new cache entry, old ones are never read.
DEMO_DATA_VERSION = 5
Run = TypeVar("Run", bound=RunConfig)


def check_builtin(source: str) -> None:
    """A ``builtin:NAME`` model name must name a recipe."""
    from vlsweep.demo.builtin import RECIPES

    if source.removeprefix(BUILTIN) not in RECIPES:
        raise UserInputError(
            f"model.name_or_path: unknown builtin model {source!r}; "
            f"choose one of {sorted(BUILTIN + n for n in RECIPES)}"
        )


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """The model config with a builtin name replaced by its shipped checkpoint directory
    (checked against its checksums); any other name is returned as it is."""
    if not cfg.name_or_path.startswith(BUILTIN):
        return cfg
    from vlsweep.demo.builtin import builtin_checkpoint

    check_builtin(cfg.name_or_path)
    path = builtin_checkpoint(cfg.name_or_path.removeprefix(BUILTIN))
    return cfg.model_copy(update={"name_or_path": str(path)})


def demo_data_dir(seed: int = 0) -> Path:
    """The synthetic demo dataset, written on first use into the cache (deterministic)."""
    out = cache_dir() / "data" / f"demo-v{DEMO_DATA_VERSION}-seed{seed}"
    if not (out / "val.jsonl").is_file():
        tmp = out.with_name(out.name + f".tmp{random.randrange(1 << 30)}")
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


def resolve(cfg: Run, *, model: bool = True) -> Run:
    """A run config the engine can load: builtin data made concrete, and (with ``model``)
    the builtin model too; without ``model`` a builtin model name is only checked."""
    update: dict[str, Any] = {"data": resolve_data(cfg.data)}
    if model:
        update["model"] = resolve_model(cfg.model)
    elif cfg.model.name_or_path.startswith(BUILTIN):
        check_builtin(cfg.model.name_or_path)
    return cfg.model_copy(update=update)
