"""``vlsweep export``: a chosen trial in the format of the tool users train with, or the
weights it trained. Every file records where it came from (study, trial, objective values,
vlsweep version).

One module per target, each with three functions that ``export`` calls in turn:
``check(ctx)``, what the tool would accept and then train differently (refused unless
``--force``; an export that cannot be made at all raises); ``notes(ctx)``, what the file
says the tool does differently from the trial; and ``build(ctx, notes)``, which returns
the files to write and writes nothing itself. What the targets share is in ``common``
(the configs, the trial's parameters, provenance, the ``Context`` each part is derived
in once) and ``chat`` (the trial's data as chat turns).

Importing this package is cheap (no torch, no Optuna): ``vlsweep export --help`` lists
``TARGETS``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsweep.errors import UserInputError
from vlsweep.lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers; at run time __getattr__ below loads them
    from optuna.trial import FrozenTrial

    from vlsweep.export.chat import Turn, chat_system, token_loss_scales, turns  # noqa: F401
    from vlsweep.export.common import (  # noqa: F401
        Options,
        provenance,
        strategy_notes,
        sweep_config,
        target_config,
        trial_params,
    )
    from vlsweep.results import SweepResults

# Format -> (its module, what it writes: the CLI's --format help). A new format is a
# module with check, notes and build, and an entry here.
TARGETS: dict[str, tuple[str, str]] = {
    "vlsweep": ("native", "a vlsweep train config that reproduces the trial"),
    "llamafactory": ("llamafactory", "a LLaMA-Factory SFT YAML and the data, one learning rate"),
    "swift": ("swift", "an ms-swift script and the data, per-module learning rates"),
    "peft": ("peft_files", "peft's adapter_config.json and the optimizer's parameter groups"),
    "adapter": ("adapter", "the adapter the trial trained, from the sweep's store"),
    "merged": ("merged", "the base with that adapter merged in"),
}
FORMATS = tuple(TARGETS)

__getattr__ = lazy_exports(
    __name__,
    {
        "Options": "common",
        "provenance": "common",
        "strategy_notes": "common",
        "sweep_config": "common",
        "target_config": "common",
        "trial_params": "common",
        "Turn": "chat",
        "chat_system": "chat",
        "token_loss_scales": "chat",
        "turns": "chat",
    },
)


def help_text() -> str:
    """Every format and what it writes, for ``vlsweep export --format``."""
    return "; ".join(f"{name}: {what}" for name, (_, what) in TARGETS.items())


def export(
    results: SweepResults,
    trial: FrozenTrial,
    fmt: str,
    out: Path,
    steps: int | None = None,
    *,
    force: bool = False,
    adapter: Path | None = None,
    artifacts: str | None = None,
) -> list[Path]:
    """Export ``trial`` as ``fmt`` into ``out``; returns the paths written."""
    from vlsweep.export.common import Context, Options, refuse, say_notes

    if fmt not in TARGETS:
        raise UserInputError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be >= 1, got {steps}")
    if adapter is not None and fmt != "merged":
        raise UserInputError(f"--adapter goes with --format merged, not {fmt!r}")
    target = importlib.import_module(f"{__name__}.{TARGETS[fmt][0]}")
    ctx = Context(
        results, trial, out, Options(steps=steps, force=force, adapter=adapter, artifacts=artifacts)
    )
    notes = refuse(target.check(ctx), force)  # before the data is converted: a refusal costs nothing
    notes += target.notes(ctx)
    files = target.build(ctx, notes)
    out.mkdir(parents=True, exist_ok=True)
    paths = [path for f in files for path in _write(f, out)]
    say_notes(notes)
    return paths


def _write(file: Any, out: Path) -> list[Path]:
    if file.write is not None:
        return list(file.write(out))
    path = out / file.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(file.text)
    if file.mode is not None:
        path.chmod(file.mode)
    return [path]
