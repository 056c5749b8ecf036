"""``--format adapter``: the adapter the trial trained (peft's files, loadable with
``PeftModel.from_pretrained``), with its metrics.json, predictions.jsonl and
train_log.jsonl, from the sweep's artifact store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlsweep.errors import UserInputError
from vlsweep.export.common import Context, File, provenance


def store(ctx: Context) -> Any:
    """The store the trial's files are in: ``--artifacts``, else the one the study records."""
    from vlsweep import artifacts

    if ctx.opts.artifacts:
        found = artifacts.open_store(ctx.opts.artifacts, create=False, key="--artifacts", check=True)
    else:
        found = artifacts.store_of(ctx.results.study)
    if found is None:
        raise UserInputError(
            f"study {ctx.results.name!r} stores no trial files (artifacts.store: none, or a study older "
            "than artifact storage); export --format vlsweep and run `vlsweep train` on it for an adapter"
        )
    return found


def check(ctx: Context) -> list[str]:
    store(ctx)  # no store is an error, --force or not
    return []


def notes(ctx: Context) -> list[str]:
    return []


def build(ctx: Context, notes: list[str]) -> list[File]:
    from vlsweep import artifacts

    results, trial = ctx.results, ctx.trial
    stored = artifacts.trial_files(trial, artifacts.removed_ids(results.study))
    extra = tuple(n for n in ("metrics.json", "predictions.jsonl", "train_log.jsonl") if n in stored)
    base_model = ctx.cfg.model.name_or_path

    def download(out: Path) -> list[Path]:
        paths = artifacts.download(results.study, store(ctx), trial, artifacts.ADAPTER_FILES, out)
        paths += artifacts.download(results.study, store(ctx), trial, extra, out)
        # The worker's path to the base may be a node's cache: name the model as the sweep did.
        config_path = out / "adapter_config.json"
        adapter_cfg = json.loads(config_path.read_text())
        adapter_cfg["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(adapter_cfg, indent=2) + "\n")
        return paths

    prov = json.dumps(provenance(results, trial), indent=2) + "\n"
    return [File("adapter", write=download), File("vlsweep_export.json", prov)]
