"""How far do a fine-tune's metrics move from one CPU kind to another?

The builtin base ships as weights, so every machine starts from the same base; what can
still differ is the fine-tune itself, because CPUs of other kinds run other vector code
(AVX-512, AVX2, SSE) whose floating-point sums round differently. One machine cannot be
another CPU, but it can run the code paths another CPU would: torch's own kernels
(``ATEN_CPU_CAPABILITY``), MKL's (``MKL_ENABLE_INSTRUCTIONS``) and oneDNN's
(``ONEDNN_MAX_CPU_ISA``) each take a ceiling on the instruction set. This runs the same
fine-tunes (``vlsweep train`` of the demo with a few of the demo's settings, one thread as
in a sweep's trial) under each ceiling, and with two threads, and reports each metric's
largest difference from the machine's own code path.

    python benchmarks/cpu_kinds.py [--json docs/benchmarks/cpu_kinds.json]

About 10 fine-tunes of 20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from vlsweep.params import BASELINE

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "demo-train.yaml"
# The instruction-set ceilings, as each library names them; "native" sets none.
KINDS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "no-avx": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
    },
}
# The demo-train settings and two more of the demo's: the sweep's untuned baseline (trial
# 0, vlsweep.params.BASELINE), and one with the projector's rate as high as the LLM's.
SETTINGS: dict[str, dict[str, Any]] = {
    "demo-train": {},
    "baseline": dict(BASELINE),
    "shared-1e-3": {"lr_vision": 1e-3, "lr_projector": 1e-3, "lr_llm": 1e-3},
}
METRICS = ("cer", "iou", "parse_fail_rate")


def train(
    env: dict[str, str], params: dict[str, Any], threads: int, work: Path, steps: int | None = None
) -> dict[str, Any]:
    cfg = yaml.safe_load(TRAIN.read_text())
    cfg["params"] = {**cfg.get("params", {}), **params}
    # The config's relative paths are read from its folder: builtin names only here.
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = work / "out"
    run_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    capability = subprocess.run(
        [sys.executable, "-c", probe], env=run_env, capture_output=True, text=True, check=True
    ).stdout.strip()
    done = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "train", str(path), "-o", str(out)]
        + (["--steps", str(steps)] if steps else []),
        env=run_env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"vlsweep train failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"capability": capability, **{m: metrics[m] for m in METRICS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one setting, 5 steps")
    args = ap.parse_args()
    rows = []
    runs = [(kind, 1) for kind in KINDS] + [("native", 2)]
    settings = dict(list(SETTINGS.items())[:1]) if args.quick else SETTINGS
    for setting, params in settings.items():
        for kind, threads in runs:
            with tempfile.TemporaryDirectory() as tmp:
                row = {
                    "setting": setting,
                    "kind": kind,
                    "threads": threads,
                    **train(KINDS[kind], params, threads, Path(tmp), 5 if args.quick else None),
                }
            print(json.dumps(row), flush=True)
            rows.append(row)
    from vlsweep.demo.builtin import cpu_name

    summary = {"machine": cpu_name(), "rows": rows, "largest_difference": largest(rows)}
    print(doc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


def largest(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's largest difference from the native one-thread run of the same setting."""
    ref = {r["setting"]: r for r in rows if r["kind"] == "native" and r["threads"] == 1}
    return {m: max(abs(r[m] - ref[r["setting"]][m]) for r in rows) for m in METRICS}


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""
    lines = [
        "| setting | code path (torch capability) | threads | CER | IoU | parse failures |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['setting']} | {r['kind']} ({r['capability']}) | {r['threads']} | {r['cer']:.4f} | "
            f"{r['iou']:.4f} | {r['parse_fail_rate']:.4f} |"
        )
    big = summary["largest_difference"]
    lines.append(
        f"\nLargest difference from the machine's own one-thread run ({summary['machine']}): "
        + ", ".join(f"{m} {v:.4f}" for m, v in big.items())
        + "."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
