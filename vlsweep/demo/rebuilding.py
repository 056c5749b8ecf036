"""Rebuilding a builtin base from its recipe (``vlsweep builtin rebuild``): the two
pretraining stages (``pretrain.build``), then the probe it is held to, into a new
directory with its provenance and ``SHA256SUMS``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlsweep.demo.builtin import (
    BUILD_THREADS,
    PROVENANCE,
    RECIPES,
    builtin_path,
    check_name,
    sha256,
    write_checksums,
)
from vlsweep.errors import UserInputError


def rebuild(name: str, out: Path, *, log: Any = print) -> dict[str, Any]:
    """Build builtin:NAME from its recipe into the new directory ``out`` (with its
    provenance and ``SHA256SUMS``) and probe it; returns the provenance, with the probe's
    figures and whether they meet the recipe's thresholds, and ``identical_to_shipped``.

    ``out`` appears only when complete: the build writes into a hidden directory beside it
    (``.NAME.tmp-*``, removed by the next rebuild into the same place if this one is
    killed) that is renamed into place at the end."""
    check_name(name, "NAME")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"-o/--output-dir: {out} is a file; give a new directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserInputError(f"-o/--output-dir: {out} exists and is not empty; give a new directory")
    import torch

    from vlsweep.demo.pretrain import BuildProgress, build
    from vlsweep.demo.probing import probe

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a killed rebuild's leftovers
        shutil.rmtree(stale, ignore_errors=True)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out.is_dir():
            out.rmdir()  # empty (checked above): the rename needs it gone
        tmp.rename(out)
    except OSError as exc:  # something took `out` meanwhile: keep the finished build
        raise UserInputError(
            f"-o/--output-dir: cannot move the finished build {tmp} to {out} ({exc})"
        ) from None
    shipped = builtin_path(name) / "model.safetensors"
    same = shipped.is_file() and sha256(shipped) == sha256(out / "model.safetensors")
    return {**info, "identical_to_shipped": same}
