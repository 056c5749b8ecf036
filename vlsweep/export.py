"""``vlsweep export``: a chosen trial in the format of the tool users train with, or the
weights it trained. Every file records where it came from (study, trial, objective values,
vlsweep version).

- ``vlsweep``: a ``vlsweep train`` config; same model, data, budget and seed reproduce
  the trial.
- ``llamafactory``: a LLaMA-Factory SFT YAML with the trial's data converted to sharegpt
  and registered (``data/dataset_info.json``); ``llamafactory-cli train llamafactory.yaml``
  runs from the export directory. One learning rate only: the file says what is lost.
- ``swift``: an ms-swift ``swift sft`` script with the data converted (per-module
  learning rates; task loss weights as each answer's ``loss_scale``).
- ``peft``: ``adapter_config.json`` (a peft ``LoraConfig``) and ``param_groups.json``
  (the optimizer's groups: regexes and learning rates).
- ``adapter``: the adapter the trial trained, from the sweep's artifact store.
- ``merged``: the base model with that adapter merged in, saved with its processor.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
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
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
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


def _trained_lrs(cfg: Any, params: TrialParams) -> dict[str, float]:
    """Learning rate per module group that trains in this config."""
    trains = {"vision": cfg.lora.vision, "projector": cfg.lora.projector != "frozen", "llm": True}
    return {g: params.lr_for(g) for g in GROUP_LR if trains[g]}


@dataclass
class Options:
    """What ``vlsweep export`` passes every format."""

    steps: int | None = None  # training steps of the exported run (default: the sweep's)
    force: bool = False  # export combinations the tool would mishandle, as notes
    adapter: Path | None = None  # merged: this adapter directory instead of the stored one
    artifacts: str | None = None  # adapter, merged: the store, if not where the study says


def export_vlsweep(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    steps = opts.steps
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


@dataclass
class Turn:
    """One sample as a single-turn chat another trainer reads: the question the trial asked
    (the config's prompt for its task) about one image, and the answer it trained toward
    (boxes in the model family's format)."""

    task: str
    image: str  # absolute path
    question: str
    answer: str
    answer_tokens: int  # the answer's tokens with the end of turn, as the trial's labels count


def turns(cfg: Any) -> tuple[dict[str, list[Turn]], str | None]:
    """The trial's training and validation samples as chat turns, encoded by the model's
    own processor exactly as the trial encodes them (no model weights are loaded), and
    the system prompt its chat template puts before them (see ``chat_system``)."""
    from vlsweep.trials import Encoder, load_data, load_processing

    data = load_data(cfg.data, Path.cwd())
    proc = load_processing(cfg.model)
    encoder = Encoder(proc.processor, proc.family, proc.codec, {t: cfg.data.prompt(t) for t in TASKS})
    out: dict[str, list[Turn]] = {}
    for split, records in (("train", data.train), ("val", data.val)):
        rows = []
        for rec in records:
            enc = encoder.encode(rec)
            n_answer = enc.full["input_ids"].shape[1] - enc.prompt["input_ids"].shape[1]
            image = str(Path(rec.image).resolve())
            rows.append(Turn(rec.task, image, encoder.question(rec), enc.answer, n_answer))
        out[split] = rows
    return out, chat_system(proc.processor)


_MARK = "\x00vlsweep-system\x00"


def chat_system(processor: Any) -> str | None:
    """The system prompt the checkpoint's chat template adds to a conversation that has
    none ("" for none), or None without a chat template.

    The trial asks each question with no system message, as the model's own template
    renders it; LLaMA-Factory's and ms-swift's templates add their own default system
    prompt (Qwen2-VL's "You are a helpful assistant."), which a checkpoint's template may
    not. The exports set the tools' system prompt to this, so training sees the prompts
    the trial saw."""
    if not getattr(processor, "chat_template", None):
        return None
    user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    plain = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    marked = processor.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": _MARK}]}, *user],
        add_generation_prompt=True,
        tokenize=False,
    )
    if _MARK not in marked:
        return None  # the template drops system messages: nothing to match
    head, tail = marked.split(_MARK, 1)
    if plain.startswith(head) and plain.endswith(tail) and len(plain) >= len(head) + len(tail):
        return plain[len(head) : len(plain) - len(tail)]
    return ""  # no system block when none is given


def _mix(samples: list[Turn], params: TrialParams) -> dict[str, float]:
    """The trial's task sampling probabilities (``mix_temperature`` over the task sizes)."""
    from vlsweep.trials import task_probabilities

    counts: dict[str, int] = {}
    for t in samples:
        counts[t.task] = counts.get(t.task, 0) + 1
    return task_probabilities(counts, params.mix_temperature)


def token_loss_scales(
    samples: list[Turn], probs: dict[str, float], weights: dict[str, float]
) -> dict[str, float]:
    """Per-token loss scales that give each task the weight the trial gave it.

    The trial weights each task's *mean* loss (``weight_ocr`` and 1 - it); a trainer that
    averages scaled token losses over the batch weights a task by its scale times its
    share of the answer tokens. That share is the task's sampling probability times its
    mean answer length, so the scale is the weight over the share (all scales are 1 when
    the weights equal the shares)."""
    tokens = {t: 0 for t in probs}
    counts = {t: 0 for t in probs}
    for s in samples:
        tokens[s.task] += s.answer_tokens
        counts[s.task] += 1
    mean = {t: tokens[t] / max(counts[t], 1) for t in probs}
    total = sum(probs[t] * mean[t] for t in probs)
    return {t: weights[t] / (probs[t] * mean[t] / total) for t in probs}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _chat(t: Turn, loss_scale: float | None = None) -> dict[str, Any]:
    """A sample as LLaMA-Factory's sharegpt and ms-swift's messages formats both read it."""
    answer: dict[str, Any] = {"role": "assistant", "content": t.answer}
    if loss_scale is not None:
        answer["loss_scale"] = round(loss_scale, 6)
    return {"messages": [{"role": "user", "content": "<image>" + t.question}, answer], "images": [t.image]}


def _family(cfg: Any) -> str | None:
    from transformers import AutoConfig

    from vlsweep.trials import family_for

    try:
        hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError:
        return None
    fam = family_for(hf.model_type)
    return fam.name if fam else None


def _refuse(problems: list[str], force: bool) -> list[str]:
    """Combinations a tool accepts and then trains differently: an error unless ``--force``
    (then each is a note in the file and on stderr)."""
    if problems and not force:
        raise UserInputError([*problems, "--force exports anyway, with these as notes in the file"])
    return [f"(exported with --force) {p}" for p in problems]


def _whole_projector(cfg: Any, params: TrialParams, tool: str, key: str, problems: list[str]) -> list[str]:
    """The modules a "full" projector trains whole (peft's modules_to_save), for the tool's
    ``key``; none to name is a problem (the tool would leave the projector frozen)."""
    if cfg.lora.projector != "full":
        return []
    modules = _plan(cfg, params)[0].modules_to_save
    if not modules:
        problems.append(
            f"lora.projector: full, but no projector module can be trained whole ({key}); "
            f"{tool} would leave the projector frozen"
        )
    return modules


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


def _say_notes(notes: list[str]) -> None:
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


LLAMAFACTORY_FILE = "llamafactory.yaml"


# A whole projector the trial trained this many times slower than the LLM, or more, is better
# left frozen than trained at LLaMA-Factory's one learning rate (the LLM's).
SLOW_PROJECTOR = 10


def export_llamafactory(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    steps, force = opts.steps, opts.force
    cfg = target_config(results)
    params = trial_params(cfg, trial)
    problems: list[str] = []
    modules_to_save = _whole_projector(cfg, params, "LLaMA-Factory", "additional_target", problems)
    notes = _refuse(problems, force)  # before the data is converted: a refusal costs nothing
    samples, system = turns(cfg)
    probs = _mix(samples["train"], params)
    tasks = list(probs)
    family = _family(cfg)
    others = {g: x for g, x in _trained_lrs(cfg, params).items() if g != "llm" and x != params.lr_llm}
    if others:
        shown = ", ".join(f"{GROUP_LR[g]}={x:.3g}" for g, x in others.items())
        notes.append(
            f"LLaMA-Factory has one learning_rate for every trainable parameter: the trial's {shown} "
            f"cannot be expressed; learning_rate is the LLM's ({params.lr_llm:.3g}). For per-module "
            "rates use --format swift (vit_lr / aligner_lr) or --format peft (param_groups.json)."
        )
    if modules_to_save and 0 < params.lr_projector * SLOW_PROJECTOR <= params.lr_llm:
        # Measured on the demo (docs/report.md): at the LLM's rate a whole projector is
        # rewritten, while one the trial trained 10x slower or more barely moved.
        notes.append(
            f"the trial trained the projector {params.lr_llm / params.lr_projector:.0f}x slower than "
            f"learning_rate ({params.lr_projector:.3g}): at learning_rate it changes far more than in the "
            "trial. If you cannot use --format swift, drop additional_target (the projector then stays "
            "frozen): the closer approximation on the demo (docs/report.md)."
        )
    if len(tasks) > 1:
        notes.append(
            f"LLaMA-Factory has no per-task loss weight: weight_ocr={params.weight_ocr:.3g} is not applied; "
            "interleave_probs carries the task mix from mix_temperature."
        )
    if cfg.lora.targets or cfg.lora.rank:
        notes.append("lora.targets / lora.rank per group are not expressible; lora_target is 'all'.")
    notes += strategy_notes(params, "LLaMA-Factory")
    if abs(params.lora_alpha - round(params.lora_alpha)) > 1e-9:
        notes.append(f"lora_alpha {params.lora_alpha:g} rounded to an integer (LLaMA-Factory takes an int).")
    if family not in LLAMAFACTORY_TEMPLATES:
        notes.append(f"no LLaMA-Factory template known for model family {family!r}: set `template` yourself.")

    # The data in LLaMA-Factory's sharegpt format, registered in data/dataset_info.json.
    info: dict[str, Any] = {}
    written = []
    for split, rows in samples.items():
        for task in tasks:
            name = f"vlsweep_{split}_{task}"
            chats = [_chat(t) for t in rows if t.task == task]
            written.append(_write_jsonl(out / "data" / f"{name}.jsonl", chats))
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
    info_path = out / "data" / "dataset_info.json"
    info_path.write_text(json.dumps(info, indent=2) + "\n")

    budget = cfg.budget
    n_steps = steps or budget.steps
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
        "template": LLAMAFACTORY_TEMPLATES.get(family or "", "default"),
        "mix_strategy": "interleave_under",
        "interleave_probs": ",".join(f"{probs[t]:.4f}" for t in tasks),
        "cutoff_len": 2048,
        "output_dir": f"saves/{results.name}-trial-{trial.number}",
        "overwrite_output_dir": True,
        "logging_steps": 10,
        "report_to": "none",
        "per_device_train_batch_size": budget.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": params.lr_llm,
        "max_steps": n_steps,
        "lr_scheduler_type": "cosine",
        # Steps, not warmup_ratio: transformers 5 dropped that argument.
        "warmup_steps": params.warmup_steps(n_steps),
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
    if modules_to_save:
        doc["additional_target"] = ",".join(modules_to_save)
    if cfg.optim.max_grad_norm is not None:
        doc["max_grad_norm"] = cfg.optim.max_grad_norm
    if cfg.lora.loraplus_lr_ratio is not None:
        doc["loraplus_lr_ratio"] = cfg.lora.loraplus_lr_ratio
    text = _header(provenance(results, trial))
    text += (
        f"# Run from this directory: llamafactory-cli train {LLAMAFACTORY_FILE}\n"
        "# data/ holds the trial's training and validation samples (vlsweep_val_* are registered,\n"
        "# not trained on); score what it trains with `vlsweep eval` (docs/report.md).\n"
    )
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += yaml.safe_dump(doc, sort_keys=False)
    path = out / LLAMAFACTORY_FILE
    path.write_text(text)
    _say_notes(notes)
    return [path, info_path, *written]


# ms-swift's --model_type and --template per vlsweep family (swift/model/constant.py): for
# a local checkpoint directory it refuses to guess between the types a config could be.
SWIFT_TYPES = {
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
SWIFT_FILE = "swift_sft.sh"
# ms-swift's Qwen2-VL templates expand the image placeholder by a fixed token id (Qwen's
# vocabulary: swift/template/templates/qwen.py); a checkpoint with another id gets one
# unexpanded image token per image and trains on broken inputs without an error.
SWIFT_IMAGE_TOKEN_IDS = {"qwen2_vl": 151655, "qwen2_5_vl": 151655}


def _image_token_id(cfg: Any) -> int | None:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    value = getattr(hf, "image_token_id", None)
    return int(value) if value is not None else None


def export_swift(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    steps, force = opts.steps, opts.force
    cfg = target_config(results)
    params = trial_params(cfg, trial)
    lrs = _trained_lrs(cfg, params)
    problems = []
    if cfg.lora.loraplus_lr_ratio is not None and {"vision", "projector"} & set(lrs):
        problems.append(
            "lora.loraplus_lr_ratio with per-module learning rates: ms-swift's --lorap_lr_ratio "
            "switches its optimizer to LoRA+, which drops --vit_lr and --aligner_lr without a word"
        )
    modules_to_save = _whole_projector(cfg, params, "ms-swift", "--modules_to_save", problems)
    family = _family(cfg)
    expected = SWIFT_IMAGE_TOKEN_IDS.get(family or "")
    got = _image_token_id(cfg) if expected is not None else None
    if expected is not None and got is not None and got != expected:
        problems.append(
            f"the checkpoint's image token id is {got}, but ms-swift's {family} template expands "
            f"images at id {expected} (Qwen's vocabulary): it would train on one unexpanded image "
            "token per image"
        )
    notes = _refuse(problems, force)  # before the data is converted: a refusal costs nothing
    samples, system = turns(cfg)
    probs = _mix(samples["train"], params)
    tasks = list(probs)
    scales = {t: 1.0 for t in tasks}
    if len(tasks) > 1:
        scales = token_loss_scales(samples["train"], probs, params.weights_for(tasks))
        shown = ", ".join(f"{t} {scales[t]:.3g}" for t in tasks)
        notes.append(
            f"the task loss weights (weight_ocr={params.weight_ocr:.3g}) travel as each answer's "
            f"loss_scale ({shown}): ms-swift scales token losses, so a task's scale is its weight "
            "over its share of the answer tokens."
        )
    if family not in SWIFT_TYPES:
        notes.append(f"no ms-swift model type known for family {family!r}: add --model_type and --template.")
    if cfg.lora.targets or cfg.lora.rank:
        notes.append("lora.targets / lora.rank per group are not expressible; ms-swift targets every linear.")
    notes += strategy_notes(params, "ms-swift")

    written = [
        _write_jsonl(
            out / "data" / f"vlsweep_{split}_{task}.jsonl",
            [_chat(t, scales[task]) for t in rows if t.task == task],
        )
        for split, rows in samples.items()
        for task in tasks
    ]
    n_steps = steps or cfg.budget.steps
    args: list[tuple[str, Any]] = [("--model", cfg.model.name_or_path)]
    if family in SWIFT_TYPES:
        args += [("--model_type", SWIFT_TYPES[family]), ("--template", SWIFT_TYPES[family])]
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
    if modules_to_save:
        args.append(("--modules_to_save", modules_to_save))
    if system is not None:
        # The system prompt the model's own chat template adds (none: ""), not the tool's.
        args.append(("--system", system))
    if cfg.lora.loraplus_lr_ratio is not None:
        args.append(("--lorap_lr_ratio", cfg.lora.loraplus_lr_ratio))
    args += [
        ("--max_steps", n_steps),
        ("--per_device_train_batch_size", cfg.budget.batch_size),
        ("--gradient_accumulation_steps", 1),
        ("--lr_scheduler_type", "cosine"),
        ("--warmup_steps", params.warmup_steps(n_steps)),
        ("--weight_decay", cfg.optim.weight_decay),
        ("--adam_beta1", cfg.optim.betas[0]),
        ("--adam_beta2", cfg.optim.betas[1]),
        ("--adam_epsilon", cfg.optim.eps),
        ("--seed", cfg.seed),
        ("--output_dir", f"output/{results.name}-trial-{trial.number}"),
        ("--logging_steps", 10),
        ("--report_to", "none"),
    ]
    if cfg.optim.max_grad_norm is not None:
        args.append(("--max_grad_norm", cfg.optim.max_grad_norm))
    if cfg.model.dtype != "auto":
        args.append(("--torch_dtype", cfg.model.dtype))
    lines = ["swift sft"]
    for flag, value in args:
        vals = value if isinstance(value, list) else [value]
        lines.append(f"    {flag} " + " ".join(shlex.quote(str(x)) for x in vals))
    text = "#!/usr/bin/env bash\n" + _header(provenance(results, trial))
    text += (
        "# Runs from anywhere (it changes to its own directory); extra arguments go on to swift sft.\n"
        "# data/ holds the trial's training and validation samples (vlsweep_val_* are not trained\n"
        "# on); score what it trains with `vlsweep eval` (docs/report.md).\n"
    )
    text += "".join(f"# NOTE: {n}\n" for n in notes)
    text += 'set -euo pipefail\ncd "$(dirname "$0")"\n'
    text += " \\\n".join(lines) + ' \\\n    "$@"\n'
    path = out / SWIFT_FILE
    path.write_text(text)
    path.chmod(0o755)
    _say_notes(notes)
    return [path, *written]


def _plan(cfg: Any, params: TrialParams) -> tuple[Any, dict[str, str]]:
    """The trial's LoRA plan on the model's skeleton, and the module-group regexes."""
    from vlsweep.trials import model_skeleton, plan_lora

    model, _, groups = model_skeleton(cfg.model)
    try:
        return plan_lora(model, groups, params, cfg.lora), groups
    except ValueError as exc:
        raise UserInputError(f"lora: {exc}") from None


def export_peft(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    steps = opts.steps
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
        # The strategies the trial ran (docs/strategies.md); a training loop of your own
        # applies them, `vlsweep train` on --format vlsweep runs them as the trial did.
        "strategies": {
            k: getattr(params, k)
            for k in (
                "loss_balance",
                "hard_oversample",
                "curriculum_ratio",
                "rotation_period",
                "rotation_share",
                "vision_first_ratio",
            )
        },
    }
    groups_path = out / "param_groups.json"
    groups_path.write_text(json.dumps(doc, indent=2) + "\n")
    prov_path = out / "vlsweep_export.json"
    prov_path.write_text(json.dumps(prov, indent=2) + "\n")
    return [out / "adapter_config.json", groups_path, prov_path]


def _stored(
    results: SweepResults, trial: FrozenTrial, names: tuple[str, ...], out: Path, opts: Options
) -> list[Path]:
    from vlsweep import artifacts

    if opts.artifacts:
        store = artifacts.open_store(opts.artifacts, create=False)
    else:
        store = artifacts.store_of(results.study)
    if store is None:
        raise UserInputError(
            f"study {results.name!r} stores no trial files (artifacts.store: none, or a study older "
            "than artifact storage); export --format vlsweep and run `vlsweep train` on it for an adapter"
        )
    return artifacts.download(results.study, store, trial, names, out)


def export_adapter(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    """The adapter the trial trained (peft's files, loadable with PeftModel.from_pretrained),
    with its metrics.json, predictions.jsonl and train_log.jsonl, from the sweep's store."""
    from vlsweep import artifacts

    paths = _stored(results, trial, artifacts.ADAPTER_FILES, out, opts)
    stored = artifacts.trial_files(trial, artifacts.removed_ids(results.study))
    extra = [n for n in ("metrics.json", "predictions.jsonl", "train_log.jsonl") if n in stored]
    paths += _stored(results, trial, tuple(extra), out, opts)
    # The worker's path to the base may be a node's cache: name the model as the sweep did.
    config_path = out / "adapter_config.json"
    adapter_cfg = json.loads(config_path.read_text())
    adapter_cfg["base_model_name_or_path"] = target_config(results).model.name_or_path
    config_path.write_text(json.dumps(adapter_cfg, indent=2) + "\n")
    prov = out / "vlsweep_export.json"
    prov.write_text(json.dumps(provenance(results, trial), indent=2) + "\n")
    return [*paths, prov]


def _checkpoint_dtype(cfg: Any) -> str:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    dtype = str(getattr(hf, "dtype", None) or getattr(hf, "torch_dtype", None) or "float32")
    dtype = dtype.removeprefix("torch.")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def export_merged(results: SweepResults, trial: FrozenTrial, out: Path, opts: Options) -> list[Path]:
    """The base model with the trial's adapter merged into its weights (peft's
    merge_and_unload) and a fully trained projector in place, saved with its processor:
    a checkpoint that loads with AutoModelForImageTextToText and no peft."""
    import tempfile

    from peft import PeftModel

    from vlsweep import artifacts
    from vlsweep.trials import load_base

    cfg = target_config(results)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = opts.adapter
        if adapter is None:
            adapter = Path(tmp)
            _stored(results, trial, artifacts.ADAPTER_FILES, adapter, opts)
        elif not (adapter / "adapter_config.json").is_file():
            raise UserInputError(f"--adapter: {adapter} has no adapter_config.json (not a peft adapter)")
        # Merged on the CPU (no GPU memory needed) in the checkpoint's own dtype unless the
        # sweep named one, without the training-only settings that would be saved with it.
        dtype = cfg.model.dtype if cfg.model.dtype != "auto" else _checkpoint_dtype(cfg)
        model_cfg = cfg.model.model_copy(
            update={"device": "cpu", "dtype": dtype, "gradient_checkpointing": False}
        )
        base = load_base(model_cfg)
        model = PeftModel.from_pretrained(base.model, str(adapter))
        merged = model.merge_and_unload()
    merged.save_pretrained(out)
    base.processor.save_pretrained(out)
    prov = out / "vlsweep_export.json"
    prov.write_text(json.dumps(provenance(results, trial), indent=2) + "\n")
    return [out]


# Format name -> exporter (results, trial, output directory, options) -> the files written.
# A new format is a function here and its entry (the CLI's --format help names them all).
EXPORTERS = {
    "vlsweep": export_vlsweep,
    "llamafactory": export_llamafactory,
    "swift": export_swift,
    "peft": export_peft,
    "adapter": export_adapter,
    "merged": export_merged,
}
FORMATS = tuple(EXPORTERS)


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
    if fmt not in EXPORTERS:
        raise UserInputError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be >= 1, got {steps}")
    if adapter is not None and fmt != "merged":
        raise UserInputError(f"--adapter goes with --format merged, not {fmt!r}")
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(steps=steps, force=force, adapter=adapter, artifacts=artifacts)
    return EXPORTERS[fmt](results, trial, out, opts)
