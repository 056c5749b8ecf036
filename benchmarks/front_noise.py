"""Is a sweep's front more than noise? Its ends compared sample by sample.

Reads a finished sweep (the demo's, by default) and its stored predictions, and for the
front's two ends, the trial with the lowest CER and the one with the highest IoU, scores
every validation sample of each (the edit distance of each OCR answer, the IoU of each
box) and computes each metric's difference between the two ends with the standard error
of that paired difference: the two trials answered the same samples, so the per-sample
differences carry the comparison (for CER, a ratio of sums: the difference of the summed
edit distances over the summed reference lengths, its standard error sqrt(n) times the
standard deviation of the per-sample differences over the summed lengths). It also
reports the front's IoU span and whether a front trial dominates the baseline (trial 0).

    vlsweep launch        # the demo study, in ./vlsweep.db
    python benchmarks/front_noise.py [--study demo] [--storage sqlite:///vlsweep.db] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any


def _per_sample(study: Any, store: Any, trial: Any, val: list[Any], codec: Any) -> dict[str, list[float]]:
    """Each validation sample's edit distance (OCR, with the reference's length) or IoU
    (grounding) in ``trial``'s stored answers; ``val`` holds (record, resized image size)."""
    from rapidfuzz.distance import Levenshtein

    from vlsweep import artifacts
    from vlsweep.metrics import iou

    with tempfile.TemporaryDirectory() as tmp:
        (path,) = artifacts.download(study, store, trial, ["predictions.jsonl"], Path(tmp))
        rows = [json.loads(x) for x in path.read_text().splitlines()]
    if len(rows) != len(val):
        raise SystemExit(f"error: trial {trial.number} has {len(rows)} predictions for {len(val)} samples")
    out: dict[str, list[float]] = {"dist": [], "length": [], "iou": []}
    for row, (rec, resized) in zip(rows, val, strict=True):
        if rec.task == "ocr":
            out["dist"].append(Levenshtein.distance(row["predict"], rec.text))
            out["length"].append(len(rec.text))
        else:  # decoded as the trial's evaluation decodes it (Qwen2.5-VL needs the resized size)
            out["iou"].append(iou(codec.decode(row["predict"], rec.size, resized), rec.box))
    return out


def measure(study_name: str, storage: str) -> dict[str, Any]:
    import optuna

    from vlsweep import artifacts, demo
    from vlsweep.export import target_config
    from vlsweep.results import SweepResults
    from vlsweep.trials import Encoder, load_data, load_processing

    study = optuna.load_study(study_name=study_name, storage=storage)
    results = SweepResults.of(study)
    cfg = demo.resolve(target_config(results).train_config())
    records = load_data(cfg.data, Path("."), ("val",)).val
    processing = load_processing(cfg.model)
    prompts = {t: cfg.data.prompt(t) for t in ("ocr", "grounding")}
    encoder = Encoder(processing.processor, processing.family, processing.codec, prompts)
    val = [(r, encoder.encode(r).resized if r.task == "grounding" else r.size) for r in records]
    store = artifacts.store_of(study)
    c, i = results.metric_names.index("cer"), results.metric_names.index("iou")
    front = sorted(results.front, key=lambda t: t.values[c])
    low_cer, high_iou = front[0], max(front, key=lambda t: t.values[i])
    a = _per_sample(study, store, low_cer, val, processing.codec)
    b = _per_sample(study, store, high_iou, val, processing.codec)
    total = sum(a["length"])
    d_dist = [x - y for x, y in zip(a["dist"], b["dist"], strict=True)]
    d_iou = [x - y for x, y in zip(a["iou"], b["iou"], strict=True)]
    cer_diff, cer_se = sum(d_dist) / total, math.sqrt(len(d_dist)) * statistics.stdev(d_dist) / total
    iou_diff, iou_se = statistics.mean(d_iou), statistics.stdev(d_iou) / math.sqrt(len(d_iou))
    baseline = results.baseline
    return {
        "study": study_name,
        "front": [[t.number, t.values[c], t.values[i]] for t in front],
        "iou_span": max(t.values[i] for t in front) - min(t.values[i] for t in front),
        "best_iou": high_iou.values[i],
        "low_cer_trial": low_cer.number,
        "high_iou_trial": high_iou.number,
        "cer_diff": cer_diff,
        "cer_diff_se": cer_se,
        "iou_diff": iou_diff,
        "iou_diff_se": iou_se,
        "baseline": None if baseline is None else [baseline.number, baseline.values[c], baseline.values[i]],
        "dominates_baseline": []
        if baseline is None
        else [
            t.number
            for t in front
            if t.values[c] <= baseline.values[c] and t.values[i] >= baseline.values[i] and t is not baseline
        ],
    }


def doc_table(m: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""

    def z(diff: float, se: float) -> str:
        return f"{abs(diff) / se:.1f}" if se > 0 else "inf"

    lo, hi = m["low_cer_trial"], m["high_iou_trial"]
    front = ", ".join(f"#{n} ({c:.4f}, {i:.3f})" for n, c, i in m["front"])
    return (
        "\n".join(
            [
                f"Front of `{m['study']}` (CER, IoU): {front}; baseline #{m['baseline'][0]} "
                f"({m['baseline'][1]:.4f}, {m['baseline'][2]:.3f}), dominated by "
                f"{', '.join(f'#{n}' for n in m['dominates_baseline']) or 'none'}.",
                "",
                f"| ends: #{lo} (lowest CER) against #{hi} (highest IoU) | difference | paired s.e. | "
                "difference / s.e. |",
                "|---|---|---|---|",
                *(
                    f"| {name} | {m[k + '_diff']:+.4f} | {m[k + '_diff_se']:.4f} | "
                    f"{z(m[k + '_diff'], m[k + '_diff_se'])} |"
                    for name, k in (("CER", "cer"), ("IoU", "iou"))
                ),
                "",
                f"IoU span of the front {m['iou_span']:.3f}, best IoU {m['best_iou']:.3f}.",
            ]
        )
        + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="demo")
    ap.add_argument("--storage", default="sqlite:///vlsweep.db")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    m = measure(args.study, args.storage)
    print(doc_table(m))
    if args.json:
        args.json.write_text(json.dumps(m, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
