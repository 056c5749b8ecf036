"""Where vlsweep keeps what it makes once per machine: the demo data and the base
models' answers on a retention set. (Caches of earlier versions also hold builtin models,
under ``models/``: the models now ship with the package, so that folder may be removed.)"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VLSWEEP_CACHE``, else ``vlsweep`` in the user cache (``$XDG_CACHE_HOME`` or ~/.cache)."""
    if env := os.environ.get("VLSWEEP_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlsweep"
