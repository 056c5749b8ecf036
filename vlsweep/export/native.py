"""``--format vlsweep``: a ``vlsweep train`` config; the same model, data, budget and seed
reproduce the trial."""

from __future__ import annotations

import yaml

from vlsweep.export.common import Context, File, header, provenance, sweep_config, trial_params

FILE = "train.yaml"


def check(ctx: Context) -> list[str]:
    return []  # every trial is a vlsweep train config


def notes(ctx: Context) -> list[str]:
    return []


def build(ctx: Context, notes: list[str]) -> list[File]:
    # The sweep's own config, builtin names kept: vlsweep resolves them where it runs.
    cfg = sweep_config(ctx.results)
    train = cfg.train_config().model_dump(mode="json")
    train["params"] = trial_params(cfg, ctx.trial).to_dict()
    train["name"] = ctx.run_name
    train["output_dir"] = f"runs/{ctx.run_name}"
    if ctx.opts.steps is not None:
        train["budget"]["steps"] = ctx.opts.steps
    text = header(provenance(ctx.results, ctx.trial)) + (
        f"# `vlsweep train {ctx.out / FILE}` reproduces the trial (same budget and seed);\n"
        "# raise budget.steps (or pass --steps) for the final, full-length fine-tune.\n"
    )
    text += yaml.safe_dump(train, sort_keys=False)
    return [File(FILE, text)]
