"""Where vlsweep keeps what it builds once per machine: builtin models and demo data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VLSWEEP_CACHE``, else ``vlsweep`` in the user cache (``$XDG_CACHE_HOME`` or ~/.cache)."""
    if env := os.environ.get("VLSWEEP_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlsweep"
