"""Does a config taken away from a sweep give what the sweep promised?

The picked trial's (cer, iou), as the sweep measured it, against ``vlsweep eval`` of what
each trainer trains from that trial's export, at the trial's budget, for several seeds:

- ``vlsweep``: ``vlsweep train`` on ``--format vlsweep`` (the same engine; the seed that
  equals the sweep's ``seed``, 0 in the demo, should reproduce the trial exactly);
- ``llamafactory``: ``llamafactory-cli train`` on ``--format llamafactory`` (one learning
  rate, no task loss weights: what it cannot express is lost);
- ``swift``: ``swift sft`` on ``--format swift`` (per-module learning rates; task weights
  as per-token loss scales).

Each trained adapter is scored by ``vlsweep eval --config train.yaml`` (the sweep's
validation data, prompts and generation settings). The trainers come from
``.ci/trainers.sh`` ($VLSWEEP_LLAMAFACTORY, $VLSWEEP_SWIFT).

    vlsweep launch                                     # the demo study, in ./vlsweep.db
    python benchmarks/export_fidelity.py --study demo --storage sqlite:///vlsweep.db \
        [--pick knee] [--seeds 0,1,2] [--tools vlsweep,llamafactory,swift] [--json out.json]

``--tools`` may also name ``llamafactory-frozen-projector``: the LLaMA-Factory export with
its ``additional_target`` removed (the projector frozen), the edit docs/report.md weighs
when a trial's projector rate is far below its language model's.

It runs nine fine-tunes of the demo (about 15 minutes on 2 cores); it is not part of CI,
whose trainer tests (tests/export/test_trainers.py) check the exports' trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

OFFLINE = {"HF_HUB_OFFLINE": "1", "MODELSCOPE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(argv: list[str], cwd: Path, log: Path, path_dir: str | None = None) -> None:
    env = {**os.environ, **OFFLINE}
    if path_dir:
        env["PATH"] = f"{path_dir}:{env['PATH']}"
    with log.open("w") as f:
        out = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({out.returncode}); see {log}")


def _vlsweep(*args: str, cwd: Path, log: Path) -> None:
    _run([sys.executable, "-m", "vlsweep.cli", *args], cwd, log)


def _score(train_yaml: Path, adapter: Path, work: Path, tag: str) -> dict[str, float]:
    out = work / f"eval-{tag}"
    _vlsweep(
        "eval",
        "--config",
        str(train_yaml),
        "--adapter",
        str(adapter),
        "-o",
        str(out),
        "--json",
        cwd=work,
        log=work / f"eval-{tag}.log",
    )
    return json.loads((out / "metrics.json").read_text())


def train_vlsweep(work: Path, exports: Path, seed: int) -> Path:
    cfg = yaml.safe_load((exports / "vlsweep" / "train.yaml").read_text())
    cfg["seed"] = seed
    path = work / f"train-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = work / f"vlsweep-seed{seed}"
    _vlsweep("train", str(path), "-o", str(out), cwd=work, log=work / f"vlsweep-seed{seed}.log")
    return out / "adapter"


def train_llamafactory(work: Path, exports: Path, seed: int) -> Path:
    tool = os.environ["VLSWEEP_LLAMAFACTORY"]
    d = exports / "llamafactory"
    doc = yaml.safe_load((d / "llamafactory.yaml").read_text())
    out = f"{doc['output_dir']}-seed{seed}"
    _run(
        [tool, "train", "llamafactory.yaml", f"seed={seed}", f"output_dir={out}"],
        d,
        work / f"llamafactory-seed{seed}.log",
    )
    return d / out


def train_llamafactory_frozen_projector(work: Path, exports: Path, seed: int) -> Path:
    """The LLaMA-Factory export with one edit a user can make when the trial's projector
    rate is far below the exported learning_rate: no ``additional_target``, so the
    projector stays frozen instead of training at the language model's rate."""
    tool = os.environ["VLSWEEP_LLAMAFACTORY"]
    d = exports / "llamafactory"
    doc = yaml.safe_load((d / "llamafactory.yaml").read_text())
    doc.pop("additional_target", None)
    doc["output_dir"] = f"{doc['output_dir']}-frozen-projector-seed{seed}"
    (d / "llamafactory-frozen-projector.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    _run(
        [tool, "train", "llamafactory-frozen-projector.yaml", f"seed={seed}"],
        d,
        work / f"llamafactory-frozen-projector-seed{seed}.log",
    )
    return d / doc["output_dir"]


def train_swift(work: Path, exports: Path, seed: int) -> Path:
    tool = os.environ["VLSWEEP_SWIFT"]
    d = exports / "swift"
    out = d / "output" / f"seed{seed}"
    _run(
        ["bash", str(d / "swift_sft.sh"), "--seed", str(seed), "--output_dir", str(out)],
        d,
        work / f"swift-seed{seed}.log",
        path_dir=str(Path(tool).parent),
    )
    ckpts = sorted(out.glob("v*/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return ckpts[-1]


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


TRAINERS = {
    "vlsweep": train_vlsweep,
    "llamafactory": train_llamafactory,
    "llamafactory-frozen-projector": train_llamafactory_frozen_projector,
    "swift": train_swift,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="demo")
    ap.add_argument("--storage", default="sqlite:///vlsweep.db")
    ap.add_argument("--pick", default="knee")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tools", default="vlsweep,llamafactory,swift")
    ap.add_argument("--work", type=Path, default=Path("export-fidelity"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tools = args.tools.split(",")
    work = args.work.resolve()
    exports = work / "exports"
    work.mkdir(parents=True, exist_ok=True)

    import optuna

    from vlsweep.results import SweepResults, pick

    results = SweepResults.of(optuna.load_study(study_name=args.study, storage=args.storage))
    trial = pick(results, args.pick)
    promised = dict(zip(results.metric_names, trial.values, strict=True))
    print(
        f"trial {trial.number} of {args.study!r}: cer={promised['cer']:.4f} iou={promised['iou']:.4f}",
        flush=True,
    )
    for fmt in {"vlsweep", *(t.split("-")[0] for t in tools)}:
        # --force: what a tool would train differently is what this benchmark measures.
        _vlsweep(
            "export",
            args.study,
            "--storage",
            args.storage,
            "--pick",
            f"trial:{trial.number}",
            "--format",
            fmt,
            "--force",
            "-o",
            str(exports / fmt),
            cwd=Path.cwd(),
            log=work / f"export-{fmt}.log",
        )
    train_yaml = exports / "vlsweep" / "train.yaml"

    rows: list[dict[str, Any]] = []
    for tool in tools:
        for seed in seeds:
            t0 = time.perf_counter()
            adapter = TRAINERS[tool](work, exports, seed)
            train_s = time.perf_counter() - t0
            m = _score(train_yaml, adapter, work, f"{tool}-seed{seed}")
            rows.append(
                {
                    "tool": tool,
                    "seed": seed,
                    "cer": m["cer"],
                    "iou": m["iou"],
                    "parse_fail_rate": m.get("parse_fail_rate"),
                    "train_seconds": round(train_s, 1),
                }
            )
            print(
                f"{tool:<12} seed {seed}: cer={m['cer']:.4f} iou={m['iou']:.4f} ({train_s:.0f}s)", flush=True
            )

    print(f"\nthe sweep measured trial {trial.number}: cer={promised['cer']:.4f} iou={promised['iou']:.4f}")
    print(f"{'tool':<12} {'cer mean':>9} {'sd':>7} {'iou mean':>9} {'sd':>7}  d_cer    d_iou")
    summary = {}
    for tool in tools:
        cer = [r["cer"] for r in rows if r["tool"] == tool]
        iou = [r["iou"] for r in rows if r["tool"] == tool]
        summary[tool] = {
            "cer": statistics.mean(cer),
            "cer_sd": sd(cer),
            "iou": statistics.mean(iou),
            "iou_sd": sd(iou),
        }
        s = summary[tool]
        print(
            f"{tool:<12} {s['cer']:>9.4f} {s['cer_sd']:>7.4f} {s['iou']:>9.4f} {s['iou_sd']:>7.4f}  "
            f"{s['cer'] - promised['cer']:+.4f}  {s['iou'] - promised['iou']:+.4f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "study": args.study,
                    "trial": trial.number,
                    "promised": promised,
                    "params": trial.params,
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )


def doc_table(f: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py): each trainer's seeds against the trial."""
    seeds = sorted({r["seed"] for r in f["rows"]})
    promised = f["promised"]
    names = {
        "vlsweep": "`vlsweep train` on `--format vlsweep`",
        "llamafactory": "LLaMA-Factory on `--format llamafactory`",
        "llamafactory-frozen-projector": "LLaMA-Factory, no `additional_target` (projector frozen)",
        "swift": "ms-swift on `--format swift`",
    }
    head = "| trained by | " + " | ".join(f"seed {s}" for s in seeds) + " | mean cer | mean iou |"
    lines = [head, "|" + "---|" * (len(seeds) + 3)]
    lines.append(
        f"| the sweep (trial {f['trial']}) | {promised['cer']:.4f} / {promised['iou']:.4f} |"
        + " |" * (len(seeds) + 1)
    )
    for tool, s in f["summary"].items():
        cells = []
        for seed in seeds:
            r = next((r for r in f["rows"] if r["tool"] == tool and r["seed"] == seed), None)
            cells.append(f"{r['cer']:.4f} / {r['iou']:.4f}" if r else "")
        lines.append(
            f"| {names.get(tool, tool)} | "
            + " | ".join(cells)
            + f" | {s['cer']:.4f} ± {s['cer_sd']:.4f} | {s['iou']:.4f} ± {s['iou_sd']:.4f} |"
        )
    p = f["params"]
    lrs = ", ".join(f"{k} {p[k]:.3g}" for k in ("lr_vision", "lr_projector", "lr_llm") if k in p)
    lines.append(f"\n(cells: cer / iou; means ± s.d. over seeds.) The trial's rates: {lrs}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
