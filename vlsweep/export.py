"""``vlsweep export``: a chosen trial's hyperparameters in the format of the tool users
train with. Every file records where it came from (study, trial, objective values,
vlsweep version).

- ``vlsweep``: a ``vlsweep train`` config; same model, data, budget and seed reproduce
  the trial.
- ``llamafactory``: a LLaMA-Factory SFT YAML (one learning rate only: see the comments it
  carries).
- ``swift``: an ms-swift ``swift sft`` command line (it has per-module learning rates).
- ``peft``: ``adapter_config.json`` (a peft ``LoraConfig``) and ``param_groups.json``
  (the optimizer's groups: regexes and learning rates).
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from vlsweep.errors import UserInputError
from vlsweep.params import GROUP_LR, TASKS, TrialParams
from vlsweep.results import SweepResults

# LLaMA-Factory's chat template per vlsweep family (src/llamafactory/data/template.py).
LLAMAFACTORY_TEMPLATES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl",
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_onevision": "llava_next_qwen",
    "internvl": "intern_vl",
    "paligemma": "paligemma",
    "gemma3": "gemma3",
}


def provenance(results: SweepResults, trial: FrozenTrial) -> dict[str, Any]:
    from vlsweep import __version__

    return {
        "study": results.name,
        "trial": trial.number,
        "values": dict(zip(results.metric_names, trial.values, strict=True)),
        "params": dict(trial.params),
        "vlsweep_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _header(prov: dict[str, Any], comment: str = "#") -> str:
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
    """The sweep config with builtin names made concrete (a builtin model: its cached
    checkpoint, built if need be; the demo data: its cached files), so that another tool
    can load what it names."""
    from vlsweep import demo

    return demo.resolve(sweep_config(results))


def trial_params(cfg: Any, trial: FrozenTrial) -> TrialParams:
    """Every hyperparameter the trial ran with, as its worker built them: the trial's
    samples replayed through the space (so conditional and tied parameters resolve as in
    the sweep), over the engine defaults. Each format writes these, never its own defaults."""
    fixed = optuna.trial.FixedTrial(dict(trial.params), number=trial.number)
    return TrialParams.of(cfg.parsed_space().suggest(fixed, cfg.settings()))


def _trained_lrs(cfg: Any, params: TrialParams) -> dict[str, float]:
    """Learning rate per module group that trains in this config."""
    trains = {"vision": cfg.lora.vision, "projector": cfg.lora.projector != "frozen", "llm": True}
    return {g: params.lr_for(g) for g in GROUP_LR if trains[g]}


def export_vlsweep(results: SweepResults, trial: FrozenTrial, out: Path, steps: int | None) -> list[Path]:
    cfg = sweep_config(results)
    train = cfg.train_config().model_dump(mode="json")
    train["params"] = trial_params(cfg, trial).to_dict()
    train["name"] = f"{results.name}-trial-{trial.number}"
    train["output_dir"] = f"runs/{results.name}-trial-{trial.number}"
    if steps is not None:
        train["budget"]["steps"] = steps
    prov = provenance(results, trial)
    text = _header(prov) + (
        f"# `vlsweep train {out / 'train.yaml'}` reproduces the trial (same budget and seed);\n"
        "# raise budget.steps (or pass --steps) for the final, full-length fine-tune.\n"
    )
    text += yaml.safe_dump(train, sort_keys=False)
    path = out / "train.yaml"
    path.write_text(text)
    return [path]


def _train_counts(cfg: Any) -> dict[str, int]:
    """Training records per task, for the mixing probabilities (reads the data files)."""
    from vlsweep.trials import load_data

    data = load_data(cfg.data, Path.cwd())
    counts: dict[str, int] = {}
    for r in data.train:
        counts[r.task] = counts.get(r.task, 0) + 1
    return counts


def _mix(cfg: Any, params: TrialParams) -> dict[str, float]:
    from vlsweep.trials import task_probabilities

    return task_probabilities(_train_counts(cfg), params.mix_temperature)


def _family(cfg: Any) -> str | None:
    from transformers import AutoConfig

    from vlsweep.trials import family_for

    try:
        hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError:
        return None
    fam = family_for(hf.model_type)
    return fam.name if fam else None


def export_llamafactory(
    results: SweepResults, trial: FrozenTrial, out: Path, steps: int | None
) -> list[Path]:
    cfg = target_config(results)
    params = trial_params(cfg, trial)
    r = params.lora_r
    alpha = params.lora_alpha
    probs = _mix(cfg, params)
    tasks = list(probs)
    family = _family(cfg)
    notes = []
    others = {g: x for g, x in _trained_lrs(cfg, params).items() if g != "llm" and x != params.lr_llm}
    if others:
        shown = ", ".join(f"{GROUP_LR[g]}={x:.3g}" for g, x in others.items())
        notes.append(
            f"LLaMA-Factory has one learning_rate for every trainable parameter: the trial's {shown} "
            f"cannot be expressed; learning_rate is the LLM's ({params.lr_llm:.3g}). For per-module "
            "rates use --format swift (vit_lr / aligner_lr) or --format peft (param_groups.json)."
        )
    if len(tasks) > 1:
        notes.append(
            f"LLaMA-Factory has no per-task loss weight: weight_ocr={params.weight_ocr:.3g} is not applied; "
            "interleave_probs carries the task mix from mix_temperature."
        )
    if cfg.lora.projector == "lora":
        notes.append("LoRA on the projector alone is not expressible; the projector stays frozen.")
    if cfg.lora.targets or cfg.lora.rank:
        notes.append("lora.targets / lora.rank per group are not expressible; lora_target is 'all'.")
    if abs(alpha - round(alpha)) > 1e-9:
        notes.append(f"lora_alpha {alpha:g} rounded to an integer (LLaMA-Factory takes an int).")
    if family not in LLAMAFACTORY_TEMPLATES:
        notes.append(f"no LLaMA-Factory template known for model family {family!r}: set `template` yourself.")
    budget = cfg.budget
    doc: dict[str, Any] = {
        "model_name_or_path": cfg.model.name_or_path,
        "trust_remote_code": cfg.model.trust_remote_code,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": r,
        "lora_alpha": int(round(alpha)),
        "lora_dropout": params.lora_dropout,
        "lora_target": "all",
        "use_rslora": cfg.lora.use_rslora,
        "freeze_vision_tower": not cfg.lora.vision,
        "freeze_multi_modal_projector": cfg.lora.projector != "full",
        "freeze_language_model": False,
        "dataset": ",".join(f"vlsweep_{t}" for t in tasks),
        "template": LLAMAFACTORY_TEMPLATES.get(family or "", "default"),
        "mix_strategy": "interleave_under",
        "interleave_probs": ",".join(f"{probs[t]:.4f}" for t in tasks),
        "cutoff_len": 2048,
        "output_dir": f"saves/{results.name}-trial-{trial.number}",
        "logging_steps": 10,
        "report_to": "none",
        "per_device_train_batch_size": budget.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": params.lr_llm,
        "max_steps": steps or budget.steps,
        "lr_scheduler_type": "cosine",
        # Steps, not warmup_ratio: transformers 5 dropped that argument.
        "warmup_steps": params.warmup_steps(steps or budget.steps),
        "weight_decay": cfg.optim.weight_decay,
        "adam_beta1": cfg.optim.betas[0],
        "adam_beta2": cfg.optim.betas[1],
        "adam_epsilon": cfg.optim.eps,
        "seed": cfg.seed,
        "bf16": cfg.model.dtype == "bfloat16",
    }
    if cfg.optim.max_grad_norm is not None:
        doc["max_grad_norm"] = cfg.optim.max_grad_norm
    if cfg.lora.loraplus_lr_ratio is not None:
        doc["loraplus_lr_ratio"] = cfg.lora.loraplus_lr_ratio
    prov = provenance(results, trial)
    text = _header(prov)
    text += (
        f"# Datasets {doc['dataset']}: register your data under these names in LLaMA-Factory's\n"
        "# data/dataset_info.json (sharegpt format with an `images` column).\n"
    )
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += yaml.safe_dump(doc, sort_keys=False)
    path = out / "llamafactory.yaml"
    path.write_text(text)
    return [path]


def export_swift(results: SweepResults, trial: FrozenTrial, out: Path, steps: int | None) -> list[Path]:
    cfg = target_config(results)
    params = trial_params(cfg, trial)
    r = params.lora_r
    probs = _mix(cfg, params)
    lrs = _trained_lrs(cfg, params)
    notes = []
    if len(probs) > 1:
        weight = f"weight_ocr={params.weight_ocr:.3g}"
        notes.append(f"ms-swift has no per-task loss weight: {weight} is not applied.")
    args: list[tuple[str, Any]] = [
        ("--model", cfg.model.name_or_path),
        ("--tuner_type", "lora"),
        ("--dataset", [f"vlsweep_{t}.jsonl" for t in probs]),
        ("--interleave_prob", [f"{p:.4f}" for p in probs.values()]),
        ("--learning_rate", repr(params.lr_llm)),
        ("--lora_rank", r),
        ("--lora_alpha", int(round(params.lora_alpha))),
        ("--lora_dropout", repr(params.lora_dropout)),
        ("--use_rslora", str(cfg.lora.use_rslora).lower()),
        ("--freeze_llm", "false"),
        ("--freeze_vit", str(not cfg.lora.vision).lower()),
        ("--freeze_aligner", str(cfg.lora.projector != "lora").lower()),
    ]
    if "vision" in lrs:
        args.append(("--vit_lr", repr(lrs["vision"])))
    if "projector" in lrs:
        args.append(("--aligner_lr", repr(lrs["projector"])))
    if cfg.lora.projector == "full":
        plan, _ = _plan(cfg, params)
        if plan.modules_to_save:
            args.append(("--modules_to_save", plan.modules_to_save))
            notes.append("the projector is trained fully (modules_to_save), as in the sweep.")
    if cfg.lora.loraplus_lr_ratio is not None:
        args.append(("--lorap_lr_ratio", cfg.lora.loraplus_lr_ratio))
    args += [
        ("--max_steps", steps or cfg.budget.steps),
        ("--per_device_train_batch_size", cfg.budget.batch_size),
        ("--lr_scheduler_type", "cosine"),
        ("--warmup_steps", params.warmup_steps(steps or cfg.budget.steps)),
        ("--weight_decay", cfg.optim.weight_decay),
        ("--seed", cfg.seed),
        ("--output_dir", f"output/{results.name}-trial-{trial.number}"),
    ]
    if cfg.optim.max_grad_norm is not None:
        args.append(("--max_grad_norm", cfg.optim.max_grad_norm))
    if cfg.model.dtype == "bfloat16":
        args.append(("--torch_dtype", "bfloat16"))
    lines = ["swift sft"]
    for flag, value in args:
        vals = value if isinstance(value, list) else [value]
        lines.append(f"    {flag} " + " ".join(shlex.quote(str(x)) for x in vals))
    prov = provenance(results, trial)
    text = "#!/usr/bin/env bash\n" + _header(prov)
    text += "# Datasets: convert your data to ms-swift's format under these file names.\n"
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += " \\\n".join(lines) + "\n"
    path = out / "swift_sft.sh"
    path.write_text(text)
    path.chmod(0o755)
    return [path]


def _plan(cfg: Any, params: TrialParams) -> tuple[Any, dict[str, str]]:
    """The trial's LoRA plan on the model's skeleton, and the module-group regexes."""
    from vlsweep.trials import model_skeleton, plan_lora

    model, _, groups = model_skeleton(cfg.model)
    try:
        return plan_lora(model, groups, params, cfg.lora), groups
    except ValueError as exc:
        raise UserInputError(f"lora: {exc}") from None


def export_peft(results: SweepResults, trial: FrozenTrial, out: Path, steps: int | None) -> list[Path]:
    from vlsweep.trials import peft_config

    cfg = target_config(results)
    params = trial_params(cfg, trial)
    plan, groups = _plan(cfg, params)
    lora = peft_config(plan, params, cfg.lora)
    lora.base_model_name_or_path = cfg.model.name_or_path
    lora.save_pretrained(str(out))
    lrs = _trained_lrs(cfg, params)
    prov = provenance(results, trial)
    doc = {
        "vlsweep": prov,
        "about": (
            "AdamW parameter groups of the trial: a trainable parameter belongs to the first group "
            "whose regex matches the start of its name (strip peft's 'base_model.model.' prefix first); "
            "with loraplus_lr_ratio, lora_B weights learn that many times faster."
        ),
        "groups": [
            {"name": g, "regex": groups[g], "lr": lrs[g], "lora_targets": plan.targets.get(g)}
            for g in GROUP_LR
            if g in lrs
        ],
        "projector_fully_trained": plan.modules_to_save,
        "loraplus_lr_ratio": cfg.lora.loraplus_lr_ratio,
        "weight_decay": cfg.optim.weight_decay,
        "betas": list(cfg.optim.betas),
        "eps": cfg.optim.eps,
        "max_grad_norm": cfg.optim.max_grad_norm,
        "schedule": {
            "kind": "cosine",
            "warmup_ratio": params.warmup_ratio,
            "warmup_steps": params.warmup_steps(steps or cfg.budget.steps),
            "steps": steps or cfg.budget.steps,
        },
        "task_loss_weights": params.weights_for(list(TASKS)),
        "mix_temperature": params.mix_temperature,
    }
    groups_path = out / "param_groups.json"
    groups_path.write_text(json.dumps(doc, indent=2) + "\n")
    prov_path = out / "vlsweep_export.json"
    prov_path.write_text(json.dumps(prov, indent=2) + "\n")
    return [out / "adapter_config.json", groups_path, prov_path]


# Format name -> exporter (results, trial, output directory, steps) -> the files written.
# A new format is a function here and its entry (the CLI's --format help names them all).
EXPORTERS = {
    "vlsweep": export_vlsweep,
    "llamafactory": export_llamafactory,
    "swift": export_swift,
    "peft": export_peft,
}
FORMATS = tuple(EXPORTERS)


def export(
    results: SweepResults, trial: FrozenTrial, fmt: str, out: Path, steps: int | None = None
) -> list[Path]:
    if fmt not in EXPORTERS:
        raise UserInputError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be >= 1, got {steps}")
    out.mkdir(parents=True, exist_ok=True)
    return EXPORTERS[fmt](results, trial, out, steps)
