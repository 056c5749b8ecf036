"""Is there early signal for early stopping? Read recorded learning curves and report, for
each evaluation step, the Spearman rank correlation of IoU (and CER) there with the final
value over the configs, and the median IoU and CER across configs.

The curves come from ``benchmarks/learning_curves.py`` (the demo's default space, configs
drawn by RandomSampler, each evaluated every 20 of its 200 steps):

    python benchmarks/learning_curves.py --configs 30 --seed 1 --out /tmp/pilot.jsonl
    python benchmarks/early_signal.py /tmp/pilot.jsonl [--json] [--out docs/benchmarks/early_signal.json]

``--out`` writes the figures for the docs' table (``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def early_signal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    full = [r for r in rows if not r.get("error") and r["curve"]]
    if not full:
        raise SystemExit("error: no config in the table has a learning curve; record some first")
    final_step = max(p["steps"] for r in full for p in r["curve"])
    full = [r for r in full if r["curve"][-1]["steps"] == final_step]
    steps = sorted({p["steps"] for r in full for p in r["curve"]})
    out: dict[str, Any] = {"configs": len(full), "diverged": len(rows) - len(full), "steps": []}
    for s in steps:
        at = {r["config"]: next((p for p in r["curve"] if p["steps"] == s), None) for r in full}
        pairs = [(at[r["config"]], r["curve"][-1]) for r in full if at[r["config"]] is not None]
        row: dict[str, Any] = {"steps": s, "fraction": s / final_step}
        for metric in ("iou", "cer"):
            now = [a[metric] for a, _ in pairs]
            end = [b[metric] for _, b in pairs]
            rho = spearmanr(now, end).statistic if s != final_step else 1.0
            row[f"spearman_{metric}"] = round(float(rho), 3)
            row[f"median_{metric}"] = round(statistics.median(now), 4)
        # Each task's validation loss as a stand-in for its objective (where recorded):
        # its rank correlation with the objective's final value (negative for IoU: a
        # lower loss should mean a higher IoU).
        for loss, metric in (("val_loss_grounding", "iou"), ("val_loss_ocr", "cer")):
            if all(loss in a for a, _ in pairs):
                rho = spearmanr([a[loss] for a, _ in pairs], [b[metric] for _, b in pairs]).statistic
                row[f"spearman_{loss}_vs_{metric}"] = round(float(rho), 3)
        out["steps"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", type=Path)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--out", type=Path, help="also write the figures (JSON) to this file")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.curves.read_text().splitlines() if line.strip()]
    result = early_signal(rows)
    if args.out:
        args.out.write_text(json.dumps({"curves": str(args.curves), **result}, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(table(result))


def table(result: dict[str, Any]) -> str:
    losses = all("spearman_val_loss_grounding_vs_iou" in r for r in result["steps"])
    lines = [
        f"{result['configs']} configs that ran to the end ({result['diverged']} diverged or failed)\n",
        "| step | share of steps | Spearman IoU vs final | median IoU | Spearman CER vs final | median CER |"
        + (" grounding val loss vs final IoU | OCR val loss vs final CER |" if losses else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if losses else ""),
    ]
    for r in result["steps"]:
        lines.append(
            f"| {r['steps']} | {r['fraction']:.0%} | {r['spearman_iou']:+.2f} | {r['median_iou']:.3f} | "
            f"{r['spearman_cer']:+.2f} | {r['median_cer']:.3f} |"
            + (
                f" {r['spearman_val_loss_grounding_vs_iou']:+.2f} |"
                f" {r['spearman_val_loss_ocr_vs_cer']:+.2f} |"
                if losses
                else ""
            )
        )
    return "\n".join(lines) + "\n"


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""
    return table(summary)


if __name__ == "__main__":
    main()
