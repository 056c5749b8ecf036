"""Does ms-swift train what a trial trained, at the trial's module learning rates?

ms-swift's Qwen2-VL template expands images at Qwen's fixed token id (151655), so it
needs a checkpoint that keeps Qwen's ids; the builtin demo model does not (its image
token is 13). This runs a real sweep on a tiny Qwen2-VL that keeps them
(``tests/support/tiny_models.py: build_qwen2_vl_qwen_ids``, random weights), takes the trial
whose three module learning rates lie furthest apart (on random weights the front's
knee is as good as any trial, and may be the baseline, with one rate everywhere), exports
it with ``--format swift`` (no ``--force``: nothing is refused), runs the export
as written with ms-swift from its own venv (``.ci/trainers.sh``: $VLSWEEP_SWIFT), and
compares what swift logs with what the trial trained: the number of trainable parameters
(counted on the model as the engine builds it) and the three module learning rates
(swift's ``vit_lr``, ``aligner_lr`` and ``llm_lr``). CER and IoU are not compared: on
random weights they mean nothing (the demo's own row of docs/benchmarks.md is about
those, for LLaMA-Factory).

    eval "$(bash .ci/trainers.sh)"
    python benchmarks/swift_fidelity.py [--trials 4] [--steps 20] [--json docs/benchmarks/swift_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
LRS = ("lr_vision", "lr_projector", "lr_llm")


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({out.returncode}):\n{log[-3000:]}")
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tool = os.environ.get("VLSWEEP_SWIFT")
    if not tool or not Path(tool).exists():
        sys.exit('$VLSWEEP_SWIFT is not set to an installed ms-swift: eval "$(bash .ci/trainers.sh)"')
    work = Path(tempfile.mkdtemp(prefix="vlsweep-swift-fidelity-"))
    t0 = time.perf_counter()
    ckpt = work / "qwen-ids"
    _run([sys.executable, "-m", "tests.support.tiny_models", "qwen2_vl_qwen_ids", str(ckpt)], ROOT)
    from vlsweep.demo.synth import write_dataset

    write_dataset(work / "data", n_train=48, n_val=16, seed=3)
    sweep = yaml.safe_load((ROOT / "vlsweep" / "configs" / "demo-sweep.yaml").read_text())
    sweep.update(
        name="swift-fidelity",
        model={"name_or_path": str(ckpt)},
        data={"train": str(work / "data" / "train.jsonl"), "val": str(work / "data" / "val.jsonl")},
        output_dir=str(work / "runs"),
    )
    sweep["budget"] = {**sweep["budget"], "steps": args.steps, "batch_size": 4}
    sweep["search"] = {**sweep["search"], "trials": args.trials}
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    url = f"sqlite:///{work / 'db.sqlite'}"
    print(f"sweep of {args.trials} trials on the Qwen-id checkpoint ...", flush=True)
    _run([sys.executable, "-m", "vlsweep.cli", "launch", "sweep.yaml", "--storage", url], work)

    import optuna

    from vlsweep.export import target_config, trial_params
    from vlsweep.results import SweepResults
    from vlsweep.trials import load_base, plan_lora
    from vlsweep.trials.lora import attach_lora

    results = SweepResults.of(optuna.load_study(study_name="swift-fidelity", storage=url))
    cfg = target_config(results)

    def spread(t: optuna.trial.FrozenTrial) -> float:
        rates = [getattr(trial_params(cfg, t), k) for k in LRS]
        return max(rates) / min(rates)

    trial = max((t for t in results.complete if not t.user_attrs.get("baseline")), key=spread)
    params = trial_params(cfg, trial)
    base = load_base(cfg.model)
    model = attach_lora(base.model, plan_lora(base.model, base.groups, params, cfg.lora), params, cfg.lora)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)

    export = work / "swift"
    _run(
        [sys.executable, "-m", "vlsweep.cli", "export", "swift-fidelity", "--storage", url]
        + ["--pick", f"trial:{trial.number}", "--format", "swift", "-o", str(export)],
        work,
    )
    print(f"ms-swift on the export of trial {trial.number}, as written ...", flush=True)
    log = _run(
        ["bash", str(export / "swift_sft.sh")],
        export,
        env={**OFFLINE, "PATH": f"{Path(tool).parent}:{os.environ['PATH']}"},
    )
    (work / "swift.log").write_text(log)
    count = re.search(r"\(([\d.]+)M Trainable", log)
    lrs = re.search(r"vit_lr: ([\d.e-]+), aligner_lr: ([\d.e-]+), llm_lr: ([\d.e-]+)", log)
    version = re.search(r"ms-swift[^\d]*(\d+\.\d+\.\d+)", log) or re.search(r"swift.*?(\d+\.\d+\.\d+)", log)
    if not count or not lrs:
        sys.exit(f"ms-swift's log lacks its trainable count or module rates; see {work / 'swift.log'}")
    summary: dict[str, Any] = {
        "checkpoint": "tiny Qwen2-VL keeping Qwen's special-token ids (random weights)",
        "trials": args.trials,
        "steps": args.steps,
        "trial": trial.number,
        "trainable": {"trial": trained, "swift_millions": float(count.group(1))},
        "lrs": {
            "trial": {k: getattr(params, k) for k in LRS},
            "swift": dict(zip(LRS, (float(x) for x in lrs.groups()), strict=True)),
        },
        "swift_version": version.group(1) if version else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(doc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


def doc_table(f: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py): what ms-swift trained against the trial."""
    n = f["trainable"]["trial"]
    m = f["trainable"]["swift_millions"]
    # ms-swift prints the count in millions to 4 decimals: equal within that rounding.
    rows = [("trainable parameters", f"{n:,}", f"{m:.4f}M", abs(n / 1e6 - m) <= 5e-5)]
    names = {"lr_vision": "vision LR (`vit_lr`)", "lr_projector": "projector LR (`aligner_lr`)"}
    names["lr_llm"] = "language model LR (`llm_lr`)"
    for key in LRS:
        a, b = f["lrs"]["trial"][key], f["lrs"]["swift"][key]
        rows.append((names[key], f"{a:.4g}", f"{b:.4g}", abs(a - b) <= 1e-9 + 1e-6 * abs(a)))
    lines = [
        f"| trial {f['trial']} of a {f['trials']}-trial sweep on {f['checkpoint']} | the trial | "
        f"ms-swift {f['swift_version'] or ''} on `--format swift` | equal |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a} | {b} | {'yes' if ok else '**no**'} |" for name, a, b, ok in rows]
    lines.append(
        "\n(ms-swift prints its count of trainable parameters in millions to 4 decimals: equal "
        "within that rounding, 50 parameters.)"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
