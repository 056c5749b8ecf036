"""vlsweep: multi-objective hyperparameter search for multi-task LoRA fine-tunes of VLMs.

Importing the package is cheap: torch, transformers, peft and ray load only when a
command or function that needs them runs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlsweep")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
