"""Attach LoRA with peft, scoped per module group.

Targets are regexes per group (peft's ``target_modules`` as a string is ``re.fullmatch``-ed
against module names), never bare names: Qwen2.5-VL's vision MLP reuses
``gate_proj/up_proj/down_proj`` and a bare name would silently reach the vision tower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from vlsweep.config import AdapterConfig
from vlsweep.params import TrialParams
from vlsweep.trials.families import compile_groups


@dataclass
class LoraPlan:
    """What will be adapted, decided before peft touches the model (tests read it)."""

    targets: dict[str, str]  # group -> regex over module names
    modules_to_save: list[str]  # fully trained projector modules
    rank: dict[str, int]
    alpha: dict[str, float]


def _generalise(names: list[str]) -> str:
    """A compact regex matching exactly these module names, with layer indices as ``\\d+``."""
    shapes = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names})
    return "|".join(shapes)


# Path components that mark a linear layer as part of attention or of the MLP, across the
# families (Qwen2-VL's LLM: self_attn / mlp; its vision tower: attn.qkv / mlp.fc1; SigLIP:
# self_attn / mlp; InternViT: attn / mlp; Florence-2's DaViT: attn / ffn).
_ATTENTION = re.compile(r"^(self_attn|attn|attention|self_attention|cross_attn|encoder_attn)$")
_MLP = re.compile(r"^(mlp|ffn|feed_forward|fc|mlp_block)$")


def layer_kind(name: str) -> str | None:
    """``attention`` or ``mlp`` by the innermost such component of a module's path."""
    for part in reversed(name.split(".")):
        if _ATTENTION.match(part):
            return "attention"
        if _MLP.match(part):
            return "mlp"
    return None


def module_group_of(name: str, compiled: dict[str, re.Pattern[str]]) -> str | None:
    hits = [g for g, rx in compiled.items() if rx.match(name + ".")]
    return hits[0] if len(hits) == 1 else None


def plan_lora(
    model: torch.nn.Module, patterns: dict[str, str], params: TrialParams, cfg: AdapterConfig
) -> LoraPlan:
    compiled = compile_groups(patterns)
    linear_by_group: dict[str, list[str]] = {"vision": [], "projector": [], "llm": []}
    out_head = {
        name
        for name, mod in model.named_modules()
        if mod is getattr(model, "get_output_embeddings", lambda: None)()
    }
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name not in out_head:
            group = module_group_of(name, compiled)
            if group:
                linear_by_group[group].append(name)

    wanted = {"llm": True, "vision": cfg.vision, "projector": cfg.projector == "lora"}
    targets: dict[str, str] = {}
    for group, on in wanted.items():
        if not on:
            continue
        if group in cfg.targets:
            rx = re.compile(cfg.targets[group])
            names = [n for n in linear_by_group[group] if rx.fullmatch(n)]
            if not names:
                raise ValueError(
                    f"lora.targets.{group}: regex {cfg.targets[group]!r} matches no "
                    f"linear layer of the {group} group"
                )
        else:
            names = linear_by_group[group]
        kind = params.targets_for(group)
        if kind != "all":
            names = [n for n in names if layer_kind(n) == kind]
        if not names:
            which = "" if kind == "all" else f" {kind}"
            raise ValueError(f"the {group} group has no{which} linear layers to put LoRA on")
        # The generalised pattern must not reach layers left out on purpose (a user regex
        # that skips some layers): fall back to exact names when it would.
        generalised = _generalise(names)
        all_linear = [n for g in linear_by_group.values() for n in g]
        reached = [n for n in all_linear if re.fullmatch(generalised, n)]
        targets[group] = (
            generalised if sorted(reached) == sorted(names) else "|".join(re.escape(n) for n in names)
        )

    modules_to_save: list[str] = []
    if cfg.projector == "full":
        modules_to_save = _projector_roots(model, compiled)

    # A searched per-group rank (lora_r_vision, lora_r_projector) over the config's
    # lora.rank, over lora_r.
    searched = {"vision": params.lora_r_vision, "projector": params.lora_r_projector}
    rank = {g: searched.get(g) or cfg.rank.get(g, params.lora_r) for g in targets}  # type: ignore[call-overload]
    alpha = {g: params.lora_alpha_ratio * r for g, r in rank.items()}
    return LoraPlan(targets=targets, modules_to_save=modules_to_save, rank=rank, alpha=alpha)


def _projector_roots(model: torch.nn.Module, compiled: dict[str, re.Pattern[str]]) -> list[str]:
    """The top-most modules whose every parameter is in the projector group.

    Containers (ModuleList/ModuleDict) are descended into, since peft can only wrap a
    module that is called. A bare parameter hanging off a larger module (LLaVA-NeXT's
    ``image_newline``) cannot be wrapped and stays frozen.
    """
    roots: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in roots):
            continue
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            continue
        names = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if names and all(module_group_of(n, compiled) == "projector" for n in names):
            roots.append(name)
    return roots


def peft_config(plan: LoraPlan, params: TrialParams, cfg: AdapterConfig) -> Any:
    """The peft ``LoraConfig`` of a plan: the LLM's rank and alpha as defaults, the other
    groups' through ``rank_pattern`` / ``alpha_pattern`` keyed by their target regexes."""
    from peft import LoraConfig

    target = "|".join(f"(?:{rx})" for rx in plan.targets.values())
    base_group = "llm"
    rank_pattern = {rx: plan.rank[g] for g, rx in plan.targets.items() if g != base_group}
    alpha_pattern = {rx: plan.alpha[g] for g, rx in plan.targets.items() if g != base_group}
    return LoraConfig(
        r=plan.rank[base_group],
        lora_alpha=plan.alpha[base_group],  # type: ignore[arg-type]  # peft scales by any number
        lora_dropout=params.lora_dropout,
        use_rslora=cfg.use_rslora,
        target_modules=target,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=plan.modules_to_save or None,
        bias="none",
        task_type=None,
    )


def attach_lora(model: torch.nn.Module, plan: LoraPlan, params: TrialParams, cfg: AdapterConfig) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter per the plan; returns the peft model."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(plan, params, cfg))
