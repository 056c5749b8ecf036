"""``--format peft``: ``adapter_config.json`` (a peft ``LoraConfig``) and
``param_groups.json`` (the optimizer's groups: regexes and learning rates), for a training
loop of your own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlsweep.export.common import Context, File, lora_plan, provenance, trained_lrs
from vlsweep.params import GROUP_LR, TASKS

# The strategies the trial ran (docs/strategies.md); a training loop of your own applies
# them, `vlsweep train` on --format vlsweep runs them as the trial did.
STRATEGY_PARAMS = (
    "loss_balance",
    "hard_oversample",
    "curriculum_ratio",
    "rotation_period",
    "rotation_share",
    "vision_first_ratio",
)


def check(ctx: Context) -> list[str]:
    return []  # peft carries every layout the engine plans


def notes(ctx: Context) -> list[str]:
    return []


def build(ctx: Context, notes: list[str]) -> list[File]:
    from vlsweep.trials import peft_config

    cfg, params = ctx.cfg, ctx.params
    plan, groups = lora_plan(cfg, params)
    lora = peft_config(plan, params, cfg.lora)
    lora.base_model_name_or_path = cfg.model.name_or_path

    def save(out: Path) -> list[Path]:  # peft's own writer, its version recorded
        lora.save_pretrained(str(out))
        return [out / "adapter_config.json"]

    lrs = trained_lrs(cfg, params)
    prov = provenance(ctx.results, ctx.trial)
    doc: dict[str, Any] = {
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
            "warmup_steps": params.warmup_steps(ctx.steps),
            "steps": ctx.steps,
        },
        "task_loss_weights": params.weights_for(list(TASKS)),
        "mix_temperature": params.mix_temperature,
        "strategies": {k: getattr(params, k) for k in STRATEGY_PARAMS},
    }
    return [
        File("adapter_config.json", write=save),
        File("param_groups.json", json.dumps(doc, indent=2) + "\n"),
        File("vlsweep_export.json", json.dumps(prov, indent=2) + "\n"),
    ]
