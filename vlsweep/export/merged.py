"""``--format merged``: the base model with the trial's adapter merged into its weights
(peft's ``merge_and_unload``) and a fully trained projector in place, saved with its
processor: a checkpoint that loads with ``AutoModelForImageTextToText`` and no peft. A
sweep on a quantized base merges into the base's unquantized weights, and says so."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from vlsweep.errors import UserInputError
from vlsweep.export import adapter as stored
from vlsweep.export.common import Context, File, provenance


def check(ctx: Context) -> list[str]:
    given = ctx.opts.adapter
    if given is None:
        stored.store(ctx)  # no store is an error, --force or not
    elif not (given / "adapter_config.json").is_file():
        raise UserInputError(f"--adapter: {given} has no adapter_config.json (not a peft adapter)")
    return []


def notes(ctx: Context) -> list[str]:
    q = ctx.cfg.model.quantization
    if q is None:
        return []
    return [
        f"the trial trained its adapter on the base quantized to {q.bits} bits; it is merged into the "
        "base's unquantized weights (as QLoRA adapters are merged), so the merged model is the trial's "
        "plus the difference between the base and its quantized copy. To run the trial's own model, load "
        "the base quantized with the adapter on top (--format adapter)."
    ]


def build(ctx: Context, notes: list[str]) -> list[File]:
    prov = json.dumps(provenance(ctx.results, ctx.trial), indent=2) + "\n"

    def merge(out: Path) -> list[Path]:
        with tempfile.TemporaryDirectory() as tmp:
            adapter = ctx.opts.adapter or _download(ctx, Path(tmp))
            merged, processor = _merged(ctx.cfg, adapter)
        merged.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "vlsweep_export.json").write_text(prov)
        return [out]

    return [File(".", write=merge)]


def _download(ctx: Context, into: Path) -> Path:
    from vlsweep import artifacts

    artifacts.download(ctx.results.study, stored.store(ctx), ctx.trial, artifacts.ADAPTER_FILES, into)
    return into


def _merged(cfg: Any, adapter: Path) -> tuple[Any, Any]:
    """The base with ``adapter`` merged in, and its processor. Merged on the CPU (no GPU
    memory needed) in the checkpoint's own dtype unless the sweep named one, without the
    training-only settings that would be saved with it."""
    from peft import PeftModel

    from vlsweep.trials import load_base

    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else _checkpoint_dtype(cfg)
    # Never into a quantized base: merged 4-bit weights would be requantized (notes()).
    model_cfg = cfg.model.model_copy(
        update={"device": "cpu", "dtype": dtype, "gradient_checkpointing": False, "quantization": None}
    )
    base = load_base(model_cfg)
    return PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload(), base.processor


def _checkpoint_dtype(cfg: Any) -> str:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    dtype = str(getattr(hf, "dtype", None) or getattr(hf, "torch_dtype", None) or "float32")
    dtype = dtype.removeprefix("torch.")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
