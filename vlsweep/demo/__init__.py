"""The demo's assets: the builtin base models (``builtin:NAME``) and the synthetic OCR +
grounding data (``builtin:demo/train``, ``builtin:demo/val``).

This package sits above the trial engine: a builtin model is built by fine-tuning a tiny
checkpoint with the engine's own data, batching and loss, and is then a checkpoint
directory like any other. ``resolve`` turns a config's builtin names into those cached
paths (building on first use) before the engine sees the config, so the engine only ever
loads paths and Hub ids. Importing the package loads the standard library only: the
rest (pydantic configs, torch for a build) loads when first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlsweep.demo.synth import DEMO_TRAIN, DEMO_VAL, STYLES, write_dataset

if TYPE_CHECKING:
    from vlsweep.demo.builtin import RECIPES, BuildProgress, ensure_builtin
    from vlsweep.demo.sources import check_builtin, demo_data_dir, resolve, resolve_data, resolve_model

# Public name -> the submodule that defines it, loaded on first use.
_LAZY = {
    "RECIPES": "builtin",
    "BuildProgress": "builtin",
    "ensure_builtin": "builtin",
    "check_builtin": "sources",
    "demo_data_dir": "sources",
    "resolve": "sources",
    "resolve_data": "sources",
    "resolve_model": "sources",
}

__all__ = [
    "DEMO_TRAIN",
    "DEMO_VAL",
    "RECIPES",
    "STYLES",
    "BuildProgress",
    "check_builtin",
    "demo_data_dir",
    "ensure_builtin",
    "resolve",
    "resolve_data",
    "resolve_model",
    "write_dataset",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlsweep.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vlsweep.demo.{module}"), name)
