"""What every export target shares: the trial's configs and parameters as its worker built
them, provenance, the files a target returns, and the notes on what a tool does
differently from the trial."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from vlsweep.errors import UserInputError
from vlsweep.params import GROUP_LR, TrialParams
from vlsweep.results import SweepResults


@dataclass
class Options:
    """What ``vlsweep export`` passes every target."""

    steps: int | None = None  # training steps of the exported run (default: the sweep's)
    force: bool = False  # export combinations the tool would mishandle, as notes
    adapter: Path | None = None  # merged: this adapter directory instead of the stored one
    artifacts: str | None = None  # adapter, merged: the store, if not where the study says


@dataclass
class File:
    """One thing an export writes under its output directory: ``name``'s ``text`` (with
    ``mode``), or what ``write(out)`` writes itself (a tool's own saving, a download),
    which returns the paths it wrote."""

    name: str
    text: str | None = None
    write: Callable[[Path], list[Path]] | None = None
    mode: int | None = None


class Context:
    """The picked trial as the targets read it; each part is derived once, when first asked."""

    def __init__(self, results: SweepResults, trial: FrozenTrial, out: Path, opts: Options):
        self.results, self.trial, self.out, self.opts = results, trial, out, opts

    @cached_property
    def cfg(self) -> Any:
        """The sweep config with builtin names made concrete (``target_config``)."""
        return target_config(self.results)

    @cached_property
    def params(self) -> TrialParams:
        return trial_params(self.cfg, self.trial)

    @cached_property
    def whole_projector(self) -> list[str]:
        """The modules a "full" projector trains whole (peft's modules_to_save)."""
        if self.cfg.lora.projector != "full":
            return []
        return list(lora_plan(self.cfg, self.params)[0].modules_to_save)

    @cached_property
    def family(self) -> str | None:
        return family(self.cfg)

    @cached_property
    def samples(self) -> tuple[dict[str, list[Any]], str | None]:
        """The trial's data as chat turns, and the checkpoint's own system prompt
        (``chat.turns``): converted only when a target gets this far."""
        from vlsweep.export.chat import turns

        return turns(self.cfg)

    @cached_property
    def task_mix(self) -> dict[str, float]:
        """The trial's sampling probability of each task of its training data."""
        from vlsweep.export.chat import task_mix

        return task_mix(self.samples[0]["train"], self.params)

    @property
    def steps(self) -> int:
        return self.opts.steps or self.cfg.budget.steps

    @property
    def run_name(self) -> str:
        return f"{self.results.name}-trial-{self.trial.number}"


def provenance(results: SweepResults, trial: FrozenTrial) -> dict[str, Any]:
    from vlsweep import __version__

    return {
        "study": results.name,
        "trial": trial.number,
        "values": dict(zip(results.metric_names, trial.values, strict=True)),
        "params": dict(trial.params),
        "vlsweep_version": __version__,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def header(prov: dict[str, Any], comment: str = "#") -> str:
    values = ", ".join(f"{k}={v:.6g}" for k, v in prov["values"].items())
    return (
        f"{comment} Exported by vlsweep {prov['vlsweep_version']} on {prov['exported_at']}\n"
        f"{comment} study {prov['study']!r}, trial {prov['trial']}: {values}\n"
    )


def sweep_config(results: SweepResults) -> Any:
    from vlsweep.search.config import SweepConfig

    if not results.config:
        raise UserInputError(
            f"study {results.name!r} has no vlsweep config attr (not made by vlsweep launch)"
        )
    return SweepConfig.model_validate(results.config)


def target_config(results: SweepResults) -> Any:
    """The sweep config with builtin names made concrete (a builtin model: its shipped
    checkpoint; the demo data: its cached files), so that another tool can load what it
    names."""
    from vlsweep import demo

    return demo.resolve(sweep_config(results))


def trial_params(cfg: Any, trial: FrozenTrial) -> TrialParams:
    """Every hyperparameter the trial ran with, as its worker built them: the trial's
    samples replayed through the space (so conditional and tied parameters resolve as in
    the sweep), over the engine defaults. Each format writes these, never its own defaults."""
    fixed = optuna.trial.FixedTrial(dict(trial.params), number=trial.number)
    return TrialParams.of(cfg.search_space.suggest(fixed, cfg.settings()))


def trained_lrs(cfg: Any, params: TrialParams) -> dict[str, float]:
    """Learning rate per module group that trains in this config."""
    trains = {"vision": cfg.lora.vision, "projector": cfg.lora.projector != "frozen", "llm": True}
    return {g: params.lr_for(g) for g in GROUP_LR if trains[g]}


def family(cfg: Any) -> str | None:
    """The vlsweep family of the checkpoint (None: one vlsweep has no family for)."""
    from transformers import AutoConfig

    from vlsweep.trials import family_for

    try:
        hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError:
        return None
    fam = family_for(hf.model_type)
    return fam.name if fam else None


def refuse(problems: list[str], force: bool) -> list[str]:
    """Combinations a tool accepts and then trains differently: an error unless ``--force``
    (then each is a note in the file and on stderr)."""
    if problems and not force:
        raise UserInputError([*problems, "--force exports anyway, with these as notes in the file"])
    return [f"(exported with --force) {p}" for p in problems]


def lora_plan(cfg: Any, params: TrialParams) -> tuple[Any, dict[str, str]]:
    """The trial's LoRA plan on the model's skeleton, and the module-group regexes."""
    from vlsweep.trials import model_skeleton, plan_lora

    model, _, groups = model_skeleton(cfg.model)
    try:
        return plan_lora(model, groups, params, cfg.lora), groups
    except ValueError as exc:
        raise UserInputError(f"lora: {exc}") from None


def whole_projector_problem(ctx: Context, tool: str, key: str) -> list[str]:
    """A "full" projector with no module to name for the tool's ``key``: the tool would
    leave the projector frozen."""
    if ctx.cfg.lora.projector != "full" or ctx.whole_projector:
        return []
    return [
        f"lora.projector: full, but no projector module can be trained whole ({key}); "
        f"{tool} would leave the projector frozen"
    ]


def strategy_notes(params: TrialParams, tool: str) -> list[str]:
    """What the trial did through the strategies (docs/strategies.md) that ``tool``'s one
    run cannot express; the export trains without it. ``vlsweep train`` on the vlsweep
    export runs every one of them."""
    notes = []
    if params.loss_balance != "static":
        notes.append(
            f"the trial balanced its task losses with loss_balance={params.loss_balance}; {tool} has "
            "no such option, so the export does not balance them that way (the notes on task "
            "weights say what it does instead)."
        )
    data = {
        "hard_oversample": params.hard_oversample != 1.0,
        "curriculum_ratio": params.curriculum_ratio > 0,
        "rotation_period": params.rotation_period > 0,
    }
    if any(data.values()):
        shown = ", ".join(f"{k}={getattr(params, k):.3g}" for k, on in data.items() if on)
        notes.append(
            f"the trial drew its batches by {shown}; {tool} samples the converted data uniformly "
            "within each task."
        )
    if params.vision_first_ratio > 0:
        notes.append(
            f"vision_first_ratio={params.vision_first_ratio:.3g}: the trial trained the vision side "
            f"alone for that fraction of the steps; {tool} trains every group from the start (run "
            "it twice, the LLM frozen the first time, to follow the trial)."
        )
    layout = {
        "lora_r_vision": params.lora_r_vision,
        "lora_r_projector": params.lora_r_projector,
        "lora_targets_llm": params.lora_targets_llm != "all",
        "lora_targets_vision": params.lora_targets_vision != "all",
    }
    if any(layout.values()):
        shown = ", ".join(f"{k}={getattr(params, k)}" for k, on in layout.items() if on)
        notes.append(
            f"the trial's LoRA layout ({shown}) is not expressible per module group in {tool}; "
            "--format peft carries it (adapter_config.json rank_pattern and target_modules)."
        )
    return notes


def say_notes(notes: list[str]) -> None:
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
