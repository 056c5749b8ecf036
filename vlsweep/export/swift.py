"""``--format swift``: an ms-swift ``swift sft`` script with the trial's data converted:
per-module learning rates (``--vit_lr``, ``--aligner_lr``), the task loss weights as each
answer's ``loss_scale``."""

from __future__ import annotations

import shlex
from typing import Any

from vlsweep.export.chat import chat, jsonl, token_loss_scales
from vlsweep.export.common import (
    Context,
    File,
    header,
    provenance,
    strategy_notes,
    trained_lrs,
    whole_projector_problem,
)

FILE = "swift_sft.sh"
# ms-swift's --model_type and --template per vlsweep family (swift/model/constant.py): for
# a local checkpoint directory it refuses to guess between the types a config could be.
TYPES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "llava": "llava1_5_hf",
    "llava_onevision": "llava_onevision_hf",
    "internvl": "internvl_hf",
    "idefics3": "idefics3",
    "paligemma": "paligemma",
    "gemma3": "gemma3_vision",
}
# ms-swift's Qwen2-VL templates expand the image placeholder by a fixed token id (Qwen's
# vocabulary: swift/template/templates/qwen.py); a checkpoint with another id gets one
# unexpanded image token per image and trains on broken inputs without an error.
IMAGE_TOKEN_IDS = {"qwen2_vl": 151655, "qwen2_5_vl": 151655}


def check(ctx: Context) -> list[str]:
    """What ms-swift would accept and then train differently."""
    cfg = ctx.cfg
    problems = []
    if cfg.lora.loraplus_lr_ratio is not None and {"vision", "projector"} & set(trained_lrs(cfg, ctx.params)):
        problems.append(
            "lora.loraplus_lr_ratio with per-module learning rates: ms-swift's --lorap_lr_ratio "
            "switches its optimizer to LoRA+, which drops --vit_lr and --aligner_lr without a word"
        )
    problems += whole_projector_problem(ctx, "ms-swift", "--modules_to_save")
    expected = IMAGE_TOKEN_IDS.get(ctx.family or "")
    got = _image_token_id(cfg) if expected is not None else None
    if expected is not None and got is not None and got != expected:
        problems.append(
            f"the checkpoint's image token id is {got}, but ms-swift's {ctx.family} template expands "
            f"images at id {expected} (Qwen's vocabulary): it would train on one unexpanded image "
            "token per image"
        )
    return problems


def _image_token_id(cfg: Any) -> int | None:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    value = getattr(hf, "image_token_id", None)
    return int(value) if value is not None else None


def _scales(ctx: Context) -> dict[str, float]:
    """Each task's per-token loss scale (1 for every task of a one-task run)."""
    probs = ctx.task_mix
    if len(probs) < 2:
        return {t: 1.0 for t in probs}
    return token_loss_scales(ctx.samples[0]["train"], probs, ctx.params.weights_for(list(probs)))


def notes(ctx: Context) -> list[str]:
    """What ms-swift trains differently from the trial, or how it carries what the trial did."""
    params, cfg = ctx.params, ctx.cfg
    said = []
    scales = _scales(ctx)
    if len(scales) > 1:
        shown = ", ".join(f"{t} {s:.3g}" for t, s in scales.items())
        said.append(
            f"the task loss weights (weight_ocr={params.weight_ocr:.3g}) travel as each answer's "
            f"loss_scale ({shown}): ms-swift scales token losses, so a task's scale is its weight "
            "over its share of the answer tokens."
        )
    if ctx.family not in TYPES:
        said.append(
            f"no ms-swift model type known for family {ctx.family!r}: add --model_type and --template."
        )
    if cfg.lora.targets or cfg.lora.rank:
        said.append("lora.targets / lora.rank per group are not expressible; ms-swift targets every linear.")
    return said + strategy_notes(params, "ms-swift")


def build(ctx: Context, notes: list[str]) -> list[File]:
    """The script (runs from anywhere), then the data with each answer's loss scale."""
    samples, _ = ctx.samples
    scales = _scales(ctx)
    lines = ["swift sft"]
    for flag, value in _arguments(ctx, scales):
        vals = value if isinstance(value, list) else [value]
        lines.append(f"    {flag} " + " ".join(shlex.quote(str(x)) for x in vals))
    text = "#!/usr/bin/env bash\n" + header(provenance(ctx.results, ctx.trial))
    text += (
        "# Runs from anywhere (it changes to its own directory); extra arguments go on to swift sft.\n"
        "# data/ holds the trial's training and validation samples (vlsweep_val_* are not trained\n"
        "# on); score what it trains with `vlsweep eval` (docs/report.md).\n"
    )
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += 'set -euo pipefail\ncd "$(dirname "$0")"\n'
    text += " \\\n".join(lines) + ' \\\n    "$@"\n'
    data = [
        File(f"data/vlsweep_{split}_{task}.jsonl", jsonl([chat(t, scale) for t in rows if t.task == task]))
        for split, rows in samples.items()
        for task, scale in scales.items()
    ]
    return [File(FILE, text, mode=0o755), *data]


def _arguments(ctx: Context, scales: dict[str, float]) -> list[tuple[str, Any]]:
    """``swift sft``'s flags: the trial's LoRA, each module group's learning rate, the budget."""
    cfg, params = ctx.cfg, ctx.params
    lrs = trained_lrs(cfg, params)
    tasks = list(scales)
    probs = ctx.task_mix
    args: list[tuple[str, Any]] = [("--model", cfg.model.name_or_path)]
    if ctx.family in TYPES:
        args += [("--model_type", TYPES[ctx.family]), ("--template", TYPES[ctx.family])]
    args += [
        ("--tuner_type", "lora"),
        ("--dataset", [f"data/vlsweep_train_{t}.jsonl" for t in tasks]),
        ("--interleave_prob", [f"{probs[t]:.4f}" for t in tasks]),
        ("--split_dataset_ratio", 0),
        ("--learning_rate", repr(params.lr_llm)),
        ("--lora_rank", params.lora_r),
        ("--lora_alpha", int(round(params.lora_alpha))),
        ("--lora_dropout", repr(params.lora_dropout)),
        ("--use_rslora", str(cfg.lora.use_rslora).lower()),
        ("--freeze_llm", "false"),
        ("--freeze_vit", str(not cfg.lora.vision).lower()),
        # A projector trained whole is a modules_to_save (below), not LoRA on the aligner.
        ("--freeze_aligner", str(cfg.lora.projector != "lora").lower()),
    ]
    if any(abs(s - 1.0) > 1e-9 for s in scales.values()):
        args.append(("--is_binary_loss_scale", "false"))
    if "vision" in lrs:
        args.append(("--vit_lr", repr(lrs["vision"])))
    if "projector" in lrs:
        args.append(("--aligner_lr", repr(lrs["projector"])))
    if ctx.whole_projector:
        args.append(("--modules_to_save", ctx.whole_projector))
    if ctx.samples[1] is not None:
        # The system prompt the model's own chat template adds (none: ""), not the tool's.
        args.append(("--system", ctx.samples[1]))
    if cfg.lora.loraplus_lr_ratio is not None:
        args.append(("--lorap_lr_ratio", cfg.lora.loraplus_lr_ratio))
    args += [
        ("--max_steps", ctx.steps),
        ("--per_device_train_batch_size", cfg.budget.batch_size),
        ("--gradient_accumulation_steps", 1),
        ("--lr_scheduler_type", "cosine"),
        ("--warmup_steps", params.warmup_steps(ctx.steps)),
        ("--weight_decay", cfg.optim.weight_decay),
        ("--adam_beta1", cfg.optim.betas[0]),
        ("--adam_beta2", cfg.optim.betas[1]),
        ("--adam_epsilon", cfg.optim.eps),
        ("--seed", cfg.seed),
        ("--output_dir", f"output/{ctx.run_name}"),
        ("--logging_steps", 10),
        ("--report_to", "none"),
    ]
    if cfg.optim.max_grad_norm is not None:
        args.append(("--max_grad_norm", cfg.optim.max_grad_norm))
    if cfg.model.dtype != "auto":
        args.append(("--torch_dtype", cfg.model.dtype))
    q = cfg.model.quantization
    if q is not None:
        # ms-swift leaves a multimodal model's vision tower and aligner unquantized, as the
        # trial did (swift/arguments/base_args/quant_args.py: get_modules_to_not_convert).
        args += [("--quant_method", "bnb"), ("--quant_bits", q.bits)]
        if q.bits == 4:
            args += [
                ("--bnb_4bit_quant_type", q.type),
                ("--bnb_4bit_use_double_quant", str(q.double_quant).lower()),
            ]
    return args
