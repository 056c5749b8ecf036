"""Rebuilding a builtin base from its recipe (``vlsweep builtin rebuild``): the two
pretraining stages (``pretrain.build``), then the probe it is held to, into a new
directory with its ``SHA256SUMS``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlsweep.demo.builtin import BUILD_THREADS, PROVENANCE, RECIPES, BuildProgress, write_checksums
from vlsweep.errors import UserInputError


def rebuild(name: str, out: Path, *, log: Any = print) -> dict[str, Any]:
    """Build builtin:NAME from its recipe into the new directory ``out`` (with its
    ``SHA256SUMS``) and probe it; returns the build's provenance with the probe's figures
    and whether they meet the recipe's thresholds. ``out`` appears only when complete."""
    import torch

    from vlsweep.demo.pretrain import build
    from vlsweep.demo.probing import probe

    if name not in RECIPES:
        raise UserInputError(f"unknown builtin model {name!r}; choose one of {sorted(RECIPES)}")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} exists and is not empty; give a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(BUILD_THREADS)
        try:
            with BuildProgress(f"building builtin:{name}", log) as progress:
                info = build(name, tmp, progress=progress)
        finally:
            torch.set_num_threads(threads)
        log(f"probing builtin:{name} on fresh scenes of the style it was pretrained on ...")
        figures = probe(tmp)
        info["probe"] = {**figures, "meets_recipe": RECIPES[name].meets(figures)}
        (tmp / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
        write_checksums(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
