"""The demo's assets: the builtin base models (``builtin:NAME``) and the synthetic OCR +
grounding data (``builtin:demo/train``, ``builtin:demo/val``).

This package sits above the trial engine: a builtin model was built by fine-tuning a tiny
checkpoint with the engine's own data, batching and loss, and ships as a checkpoint
directory like any other. ``resolve`` turns a config's builtin names into those paths
(and the demo data's cached files) before the engine sees the config, so the engine only
ever loads paths and Hub ids. Importing the package loads the standard library only: the
rest (pydantic configs, torch for a rebuild) loads when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlsweep.demo.synth import DEMO_TRAIN, DEMO_VAL, STYLES, write_dataset
from vlsweep.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ below loads them
    from vlsweep.demo.builtin import RECIPES, builtin_checkpoint, builtin_path, check_name, verify  # noqa: F401
    from vlsweep.demo.probing import probe  # noqa: F401
    from vlsweep.demo.rebuilding import rebuild  # noqa: F401
    from vlsweep.demo.sources import (  # noqa: F401
        demo_data_dir,
        resolve,
        resolve_data,
        resolve_model,
    )

# Public name -> the submodule that defines it, loaded on first use.
_LAZY = {
    "RECIPES": "builtin",
    "check_name": "builtin",
    "verify": "builtin",
    "builtin_checkpoint": "builtin",
    "builtin_path": "builtin",
    "rebuild": "rebuilding",
    "probe": "probing",
    "demo_data_dir": "sources",
    "resolve": "sources",
    "resolve_data": "sources",
    "resolve_model": "sources",
}
__all__ = ["DEMO_TRAIN", "DEMO_VAL", "STYLES", "write_dataset", *_LAZY]
__getattr__ = lazy_exports(__name__, _LAZY)
