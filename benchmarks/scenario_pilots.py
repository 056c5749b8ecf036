"""Which demo fine-tune shows the conflict practitioners meet? The pilots behind the demo.

Each scenario is a dataset drawn by ``vlsweep.demo.synth.write_dataset`` (and, for some,
another answer format for the boxes) fine-tuned from the shipped base
``builtin:tiny-qwen2-vl`` at the demo's budget (200 steps, batch 8, vision LoRA, projector
trained whole): a shared-LR scan and a handful of separate-LR configs, one seed. What
each scenario models and what it showed is in docs/demo.md; the demo uses the one whose
pilot showed the conflict (``table-cells``, the data of ``builtin:demo``).

    python benchmarks/scenario_pilots.py [--scenarios pixel-boxes,...] \
        [--out benchmarks/data/scenario_pilots.jsonl] [--summary docs/benchmarks/scenario_pilots.json]

One JSON line per (scenario, config); a rerun skips the lines already in ``--out``.
About 2 minutes per scenario on 2 cores. ``--summary`` writes the docs' table's file
(``docs/benchmarks/scenario_pilots.json``, rendered by ``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "data" / "scenario_pilots.jsonl"
SUMMARY = ROOT / "docs" / "benchmarks" / "scenario_pilots.json"


@dataclass(frozen=True)
class Scenario:
    """A candidate demo fine-tune: how its data is drawn and how its answers write boxes."""

    models: str  # the real fine-tune it stands for
    data: dict[str, Any] = field(default_factory=dict)  # write_dataset's arguments
    answers: str = "qwen2_vl"  # the box format of the grounding answers (``codec``)


SCENARIOS = {
    # The issue's own example: the base writes Qwen2-VL's 0-1000 boxes, the data Qwen2.5-VL's
    # absolute pixels (in the base's syntax), on the earlier demo's data (text boxes, the
    # demo style for both tasks, half OCR).
    "pixel-boxes": Scenario(
        "a Qwen2.5-VL-format grounding set (absolute pixel boxes) fine-tuning a Qwen2-VL base",
        {"boxes": "text", "ocr_style": "demo", "ocr_share": 0.5},
        answers="pixels_in_qwen2_syntax",
    ),
    # The same data with Qwen3-VL's answer format: JSON, coordinates on 0-1000 as the base's.
    "json-boxes": Scenario(
        "a Qwen3-VL-format grounding set (JSON bbox_2d, 0-1000) fine-tuning a Qwen2-VL base",
        {"boxes": "text", "ocr_style": "demo", "ocr_share": 0.5},
        answers="qwen3_vl",
    ),
    # Table-cell boxes, OCR of the same new document style, half the data each.
    "table-cells-balanced": Scenario(
        "table-cell grounding (PubTables-1M / FinTabNet cell boxes) with OCR of the same scans",
        {"boxes": "cell", "ocr_style": "demo", "ocr_share": 0.5},
    ),
    # The demo's data: table-cell boxes on the new document style, a tenth plain-print OCR
    # replay the base already reads.
    "table-cells": Scenario(
        "table-cell grounding (PubTables-1M / FinTabNet cell boxes) with a plain-print OCR replay share",
        {},
    ),
}

# (lr_vision, lr_projector, lr_llm): a shared scan, then separate rates.
SHARED = [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
SPLITS = [
    (1e-4, 1e-4, 3e-3),  # the LLM fast, the vision side slow
    (3e-3, 1e-4, 3e-3),  # the projector alone slow
    (1e-4, 1e-3, 1e-2),  # the split
    (1e-3, 3e-3, 1e-3),  # the projector alone fast
    (1e-2, 1e-4, 1e-3),  # the vision tower alone fast
]


# The pilots' extra answer format, absolute pixels in Qwen2-VL's syntax (no shipped codec
# writes it).
_PIXELS_RX = re.compile(r"\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*,\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)")


def _pixels_encode(box: Any, size: Any, resized: Any) -> str:
    x1, y1, x2, y2 = (round(v) for v in box)
    return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


def _pixels_decode(text: str, size: Any, resized: Any) -> Any:
    m = _PIXELS_RX.search(text)
    if not m:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def codec(answers: str) -> Any:
    """The box codec a scenario's answers are written in: a shipped one, or the pilots' own.
    A trial is given it through its base (``dataclasses.replace(base, codec=...)``)."""
    from vlsweep.trials import CODECS, BoxCodec

    if answers == "pixels_in_qwen2_syntax":
        return BoxCodec(answers, _pixels_encode, _pixels_decode)
    return CODECS[answers]


def setup(data_dir: Path, steps: int) -> tuple[Any, Path]:
    """A pilot's trial config on the data in ``data_dir``, and the directory itself."""
    from vlsweep import demo
    from vlsweep.config import TrainConfig

    cfg = demo.resolve(
        TrainConfig.model_validate(
            {
                "model": {"name_or_path": "builtin:tiny-qwen2-vl"},
                "data": {"train": f"{data_dir}/train.jsonl", "val": f"{data_dir}/val.jsonl"},
                "budget": {"steps": steps, "batch_size": 8},
                "lora": {"vision": True, "projector": "full"},
            }
        )
    )
    return cfg, data_dir


def _train(job: tuple[str, tuple[float, float, float]]) -> dict[str, Any]:
    from vlsweep.params import BASELINE, TrialParams
    from vlsweep.trials import pooled, run_trial

    name, lrs = job
    pilot = pooled(name)
    base = dataclasses.replace(pilot.base, codec=codec(SCENARIOS[name].answers))
    params = TrialParams.of({**BASELINE, "lr_vision": lrs[0], "lr_projector": lrs[1], "lr_llm": lrs[2]})
    t0 = time.perf_counter()
    try:
        r = run_trial(params, pilot.cfg.budget, cfg=pilot.cfg, data=pilot.data, base=base)
        metrics = {k: round(r[k], 4) for k in ("cer", "iou", "parse_fail_rate")}
    except FloatingPointError as exc:
        metrics = {"cer": 1.0, "iou": 0.0, "error": str(exc)}
    return {
        "lr_vision": lrs[0],
        "lr_projector": lrs[1],
        "lr_llm": lrs[2],
        **metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(name: str, steps: int, workers: int, done: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    from vlsweep.demo import write_dataset
    from vlsweep.trials import base_pool

    scenario = SCENARIOS[name]
    jobs = [(lr, lr, lr) for lr in SHARED] + SPLITS
    jobs = [j for j in jobs if (name, steps, *j) not in done]
    if not jobs:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), **scenario.data)
        with base_pool({name: setup(Path(tmp), steps)}, workers=workers) as pool:
            for row in pool.imap(_train, [(name, lrs) for lrs in jobs]):
                row = {
                    "scenario": name,
                    "steps": steps,
                    "shared": row["lr_vision"] == row["lr_projector"] == row["lr_llm"],
                    **row,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario: the best shared-LR point for each metric and the best separate config."""
    out: dict[str, Any] = {}
    for name in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == name]
        if not mine:
            continue
        shared = [r for r in mine if r["shared"]]
        out[name] = {"models": SCENARIOS[name].models, "rows": mine}
        if shared:
            out[name]["cer_best_shared"] = min(shared, key=lambda r: r["cer"])
            out[name]["iou_best_shared"] = max(shared, key=lambda r: r["iou"])
    return out


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py): every config of every pilot."""
    lines = [
        "| scenario | lr_vision / lr_projector / lr_llm | CER | IoU | parse failures |",
        "|---|---|---|---|---|",
    ]
    for name, part in summary.items():
        for r in part["rows"]:
            lrs = (
                f"{r['lr_llm']:.0e} shared"
                if r["shared"]
                else (f"{r['lr_vision']:.0e} / {r['lr_projector']:.0e} / {r['lr_llm']:.0e}")
            )
            lines.append(
                f"| {name} | {lrs} | {r['cer']:.3f} | {r['iou']:.3f} | {r.get('parse_fail_rate', 1.0):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summary", type=Path, default=None, help=f"write the docs' file (e.g. {SUMMARY})")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: the demo's scenario, 5 steps, into a temporary file",
    )
    args = ap.parse_args()
    if args.quick:
        args.scenarios, args.steps = "table-cells", 5
        args.out = Path(tempfile.mkdtemp()) / "pilots.jsonl"
    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"--scenarios: unknown {unknown}; known: {', '.join(SCENARIOS)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in args.out.read_text().splitlines()] if args.out.is_file() else []
    done = {
        (r["scenario"], r.get("steps", 200), r["lr_vision"], r["lr_projector"], r["lr_llm"]) for r in rows
    }
    for name in names:
        new = run(name, args.steps, args.workers, done)
        with args.out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
    if args.summary:
        args.summary.write_text(json.dumps(summary(rows), indent=1) + "\n")
        print(f"wrote {args.summary}")
    print(doc_table(summary([r for r in rows if r["scenario"] in names])))


if __name__ == "__main__":
    main()
