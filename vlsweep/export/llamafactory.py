"""``--format llamafactory``: a LLaMA-Factory SFT YAML with the trial's data converted to
sharegpt and registered (``data/dataset_info.json``); ``llamafactory-cli train
llamafactory.yaml`` runs from the export directory. One learning rate only: the file says
what is lost."""

from __future__ import annotations

import json
from typing import Any

import yaml

from vlsweep.export.chat import chat, jsonl
from vlsweep.export.common import (
    Context,
    File,
    header,
    provenance,
    strategy_notes,
    trained_lrs,
    whole_projector_problem,
)
from vlsweep.params import GROUP_LR

FILE = "llamafactory.yaml"
# LLaMA-Factory's chat template per vlsweep family (src/llamafactory/data/template.py).
TEMPLATES = {
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
# A whole projector the trial trained this many times slower than the LLM, or more, is better
# left frozen than trained at LLaMA-Factory's one learning rate (the LLM's).
SLOW_PROJECTOR = 10


def check(ctx: Context) -> list[str]:
    problems = whole_projector_problem(ctx, "LLaMA-Factory", "additional_target")
    q = ctx.cfg.model.quantization
    if q is not None and ctx.whole_projector:
        # LLaMA-Factory quantizes every linear layer, the projector's too, and bitsandbytes'
        # layers pass no gradient to their quantized weights (MatMul4Bit's backward).
        problems.append(
            f"lora.projector: full on a {q.bits}-bit base: LLaMA-Factory quantizes the projector too (it "
            "has no key to leave it out), and bitsandbytes' quantized layers give their weights no "
            "gradient, so additional_target would train the projector's biases only; sweep with "
            "lora.projector: lora or frozen, or use --format swift (it keeps the projector unquantized)"
        )
    return problems


def notes(ctx: Context) -> list[str]:
    """What LLaMA-Factory trains differently from the trial."""
    params, cfg = ctx.params, ctx.cfg
    said = []
    others = {g: x for g, x in trained_lrs(cfg, params).items() if g != "llm" and x != params.lr_llm}
    if others:
        shown = ", ".join(f"{GROUP_LR[g]}={x:.3g}" for g, x in others.items())
        said.append(
            f"LLaMA-Factory has one learning_rate for every trainable parameter: the trial's {shown} "
            f"cannot be expressed; learning_rate is the LLM's ({params.lr_llm:.3g}). For per-module "
            "rates use --format swift (vit_lr / aligner_lr) or --format peft (param_groups.json)."
        )
    if ctx.whole_projector and 0 < params.lr_projector * SLOW_PROJECTOR <= params.lr_llm:
        # Measured on the demo (docs/report.md): at the LLM's rate a whole projector is
        # rewritten, while one the trial trained 10x slower or more barely moved.
        said.append(
            f"the trial trained the projector {params.lr_llm / params.lr_projector:.0f}x slower than "
            f"learning_rate ({params.lr_projector:.3g}): at learning_rate it changes far more than in the "
            "trial. If you cannot use --format swift, drop additional_target (the projector then stays "
            "frozen): the closer approximation on the demo (docs/report.md)."
        )
    if len(ctx.task_mix) > 1:
        said.append(
            f"LLaMA-Factory has no per-task loss weight: weight_ocr={params.weight_ocr:.3g} is not applied; "
            "interleave_probs carries the task mix from mix_temperature."
        )
    if cfg.lora.targets or cfg.lora.rank:
        said.append("lora.targets / lora.rank per group are not expressible; lora_target is 'all'.")
    if cfg.model.quantization is not None:
        said.append(
            f"model.quantization: LLaMA-Factory quantizes the whole model to {cfg.model.quantization.bits} "
            "bits (quantization_bit), the vision tower too, where the trial kept the vision tower and "
            "the projector in the model's dtype; it has no key to leave them out."
        )
    said += strategy_notes(params, "LLaMA-Factory")
    if abs(params.lora_alpha - round(params.lora_alpha)) > 1e-9:
        said.append(f"lora_alpha {params.lora_alpha:g} rounded to an integer (LLaMA-Factory takes an int).")
    if ctx.family not in TEMPLATES:
        said.append(
            f"no LLaMA-Factory template known for model family {ctx.family!r}: set `template` yourself."
        )
    return said


def build(ctx: Context, notes: list[str]) -> list[File]:
    """The YAML, then the data in sharegpt format and its registry (``dataset_info.json``)."""
    samples, _ = ctx.samples
    tasks = list(ctx.task_mix)
    data, info = [], {}
    for split, rows in samples.items():
        for task in tasks:
            name = f"vlsweep_{split}_{task}"
            data.append(File(f"data/{name}.jsonl", jsonl([chat(t) for t in rows if t.task == task])))
            info[name] = {
                "file_name": f"{name}.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                },
            }
    text = header(provenance(ctx.results, ctx.trial))
    text += (
        f"# Run from this directory: llamafactory-cli train {FILE}\n"
        "# data/ holds the trial's training and validation samples (vlsweep_val_* are registered,\n"
        "# not trained on); score what it trains with `vlsweep eval` (docs/report.md).\n"
    )
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += yaml.safe_dump(_train_args(ctx, tasks), sort_keys=False)
    return [File(FILE, text), File("data/dataset_info.json", json.dumps(info, indent=2) + "\n"), *data]


def _train_args(ctx: Context, tasks: list[str]) -> dict[str, Any]:
    """The SFT arguments: the trial's LoRA, the LLM's learning rate, its budget and mix."""
    cfg, params = ctx.cfg, ctx.params
    probs = ctx.task_mix
    system = ctx.samples[1]
    doc: dict[str, Any] = {
        "model_name_or_path": cfg.model.name_or_path,
        "trust_remote_code": cfg.model.trust_remote_code,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": params.lora_r,
        "lora_alpha": int(round(params.lora_alpha)),
        "lora_dropout": params.lora_dropout,
        "lora_target": "all",
        "use_rslora": cfg.lora.use_rslora,
        "freeze_vision_tower": not cfg.lora.vision,
        # In LoRA mode an unfrozen projector gets LoRA on its linear layers; one trained
        # whole is an additional_target (peft's modules_to_save) and stays out of lora_target.
        "freeze_multi_modal_projector": cfg.lora.projector != "lora",
        "freeze_language_model": False,
        "dataset_dir": "data",
        "dataset": ",".join(f"vlsweep_train_{t}" for t in tasks),
        "template": TEMPLATES.get(ctx.family or "", "default"),
        "mix_strategy": "interleave_under",
        "interleave_probs": ",".join(f"{probs[t]:.4f}" for t in tasks),
        "cutoff_len": 2048,
        "output_dir": f"saves/{ctx.run_name}",
        "overwrite_output_dir": True,
        "logging_steps": 10,
        "report_to": "none",
        "per_device_train_batch_size": cfg.budget.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": params.lr_llm,
        "max_steps": ctx.steps,
        "lr_scheduler_type": "cosine",
        # Steps, not warmup_ratio: transformers 5 dropped that argument.
        "warmup_steps": params.warmup_steps(ctx.steps),
        "weight_decay": cfg.optim.weight_decay,
        "adam_beta1": cfg.optim.betas[0],
        "adam_beta2": cfg.optim.betas[1],
        "adam_epsilon": cfg.optim.eps,
        "seed": cfg.seed,
        "bf16": cfg.model.dtype == "bfloat16",
    }
    if system is not None:
        # The system prompt the model's own chat template adds (none: ""), not the tool's.
        doc["default_system"] = system
    if cfg.model.dtype == "float16":
        doc["fp16"] = True
    if ctx.whole_projector:
        doc["additional_target"] = ",".join(ctx.whole_projector)
    q = cfg.model.quantization
    if q is not None:
        doc.update(quantization_bit=q.bits, quantization_method="bnb")
        if q.bits == 4:
            doc.update(quantization_type=q.type, double_quantization=q.double_quant)
    if cfg.optim.max_grad_norm is not None:
        doc["max_grad_norm"] = cfg.optim.max_grad_norm
    if cfg.lora.loraplus_lr_ratio is not None:
        doc["loraplus_lr_ratio"] = cfg.lora.loraplus_lr_ratio
    return doc
