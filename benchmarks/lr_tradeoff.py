"""Does the demo show the trade-off, and do separate module learning rates pay off?

Two measurements on the embedded demo (builtin tiny Qwen2-VL, the table-cell grounding
data of docs/demo.md, 200 steps, vision LoRA on, projector trained whole):

``scan``: one learning rate shared by the vision tower, the projector and the language
model, scanned over a log grid half a decade apart, every other hyperparameter at the
baseline's value (rank 8, alpha 16, equal task weights); each point trained with several
seeds (the LoRA init and the batch order). CER and IoU against the LR, and the scan's
verdict: are the LR with the lowest mean CER and the one with the highest mean IoU at
least 3x apart, and is each metric at the other's best LR worse by more than twice its
seed standard deviation there?

``tied``: the hypervolume of the front that the real sweep (``vlsweep launch``'s
``run_sweep`` on a local Ray, the demo's trial count, steps and sampler) finds with the
default space (three separate module LRs) against the same space with ``lr_vision`` and
``lr_projector`` tied to ``lr_llm`` (``{same_as: lr_llm}``), for several sampler seeds.
Hypervolume against cer = 1, iou = 0 (``vlsweep.pareto``); the verdict: does the
separate median exceed the tied one by more than twice the larger of the two arms' seed
standard deviations?

Both write their part of one JSON file (``--json``, read and updated, so each part can be
re-run alone): ``{"scan": [...], "tied_vs_separate": [...], "reference_point": [1, 0],
"scan_verdict": {...}, "tied_verdict": {...}}``. ``benchmarks/doc_tables.py`` makes the
docs' tables from it.

    python benchmarks/lr_tradeoff.py scan --seeds 0,1,2 --json docs/benchmarks/module_lr.json \
        --png docs/benchmarks/lr_scan.png
    python benchmarks/lr_tradeoff.py tied --seeds 0,1,2,3,4 --json docs/benchmarks/module_lr.json \
        --png docs/benchmarks/lr_tied.png
    python benchmarks/lr_tradeoff.py scan --quick    # CI smoke run: 2 LRs, 1 seed, 10 steps
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vlsweep" / "configs" / "demo-sweep.yaml"
# Seven rates half a decade apart over three decades.
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
REFERENCE = [1.0, 0.0]


def demo_setup(steps: int | None) -> tuple[Any, Path]:
    """The demo's trial config (``steps`` long, if given) and its base directory."""
    from vlsweep import demo
    from vlsweep.search.config import load_sweep_config

    cfg, base_dir = load_sweep_config(DEMO)
    cfg = demo.resolve(cfg.train_config())
    if steps is not None:
        cfg.budget.steps = steps
    return cfg, base_dir


def _train(job: tuple[float, int]) -> dict[str, Any]:
    from vlsweep.params import BASELINE, TrialParams
    from vlsweep.trials import pooled, run_trial

    lr, seed = job
    demo = pooled("demo")
    cfg = demo.cfg.model_copy(update={"seed": seed})
    params = TrialParams.of({**BASELINE, "lr_vision": lr, "lr_projector": lr, "lr_llm": lr})
    t0 = time.perf_counter()
    try:
        result = run_trial(params, cfg.budget, cfg=cfg, data=demo.data, base=demo.base)
        metrics = {k: result[k] for k in ("cer", "iou", "iou_se", "acc_iou50", "parse_fail_rate")}
    except FloatingPointError as exc:  # a diverged run is a result too
        metrics = {"cer": 1.0, "iou": 0.0, "error": str(exc)}
    return {"lr": lr, "seed": seed, **metrics, "seconds": round(time.perf_counter() - t0, 1)}


def scan(lrs: list[float], seeds: list[int], workers: int, steps: int | None) -> list[dict[str, Any]]:
    from vlsweep.trials import base_pool

    jobs = [(lr, seed) for lr in lrs for seed in seeds]
    rows = []
    with base_pool({"demo": demo_setup(steps)}, workers=workers) as pool:
        for row in pool.imap_unordered(_train, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["lr"], r["seed"]))


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def scan_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each metric over the seeds, per LR."""
    out = []
    for lr in sorted({r["lr"] for r in rows}):
        at = [r for r in rows if r["lr"] == lr]
        stats: dict[str, Any] = {"lr": lr, "runs": len(at)}
        for m in ("cer", "iou"):
            stats[m], stats[f"{m}_sd"] = statistics.mean(r[m] for r in at), _sd([r[m] for r in at])
        out.append(stats)
    return out


def scan_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three conditions on the scan, each with the figures behind it."""
    stats = scan_stats(rows)
    cer_best = min(stats, key=lambda s: s["cer"])
    iou_best = max(stats, key=lambda s: s["iou"])
    ratio = max(cer_best["lr"], iou_best["lr"]) / min(cer_best["lr"], iou_best["lr"])
    iou_gap = iou_best["iou"] - cer_best["iou"]
    cer_gap = iou_best["cer"] - cer_best["cer"]
    return {
        "cer_best_lr": cer_best["lr"],
        "iou_best_lr": iou_best["lr"],
        "lr_ratio": ratio,
        "iou_at_cer_best": cer_best["iou"],
        "iou_gap": iou_gap,
        "iou_sd_at_cer_best": cer_best["iou_sd"],
        "cer_at_iou_best": iou_best["cer"],
        "cer_gap": cer_gap,
        "cer_sd_at_iou_best": iou_best["cer_sd"],
        "apart_3x": ratio >= 3 - 1e-9,
        "iou_worse_by_2sd": iou_gap > 2 * cer_best["iou_sd"],
        "cer_worse_by_2sd": cer_gap > 2 * iou_best["cer_sd"],
    }


def scan_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shared LR | CER (mean ± s.d. over seeds) | IoU (mean ± s.d.) | runs |", "|---|---|---|---|"]
    for s in scan_stats(rows):
        lines.append(
            f"| {s['lr']:.0e} | {s['cer']:.3f} ± {s['cer_sd']:.3f} | {s['iou']:.3f} ± {s['iou_sd']:.3f} "
            f"| {s['runs']} |"
        )
    return "\n".join(lines)


def scan_verdict_table(rows: list[dict[str, Any]]) -> str:
    v = scan_verdict(rows)
    yes = {True: "**yes**", False: "**no**"}
    return "\n".join(
        [
            "| condition | figures | met |",
            "|---|---|---|",
            f"| the CER-best and IoU-best LRs at least 3x apart | {v['cer_best_lr']:.0e} and "
            f"{v['iou_best_lr']:.0e} ({v['lr_ratio']:.0f}x) | {yes[v['apart_3x']]} |",
            f"| at the CER-best LR, IoU below the best by > 2 s.d. there | {v['iou_at_cer_best']:.3f}, "
            f"{v['iou_gap']:.3f} below (s.d. {v['iou_sd_at_cer_best']:.3f}) | {yes[v['iou_worse_by_2sd']]} |",
            f"| at the IoU-best LR, CER above the best by > 2 s.d. there | {v['cer_at_iou_best']:.3f}, "
            f"{v['cer_gap']:.3f} above (s.d. {v['cer_sd_at_iou_best']:.3f}) | {yes[v['cer_worse_by_2sd']]} |",
        ]
    )


def scan_figure(rows: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("CER (lower is better)", "IoU (higher is better)"))
    stats = scan_stats(rows)
    for col, metric in ((1, "cer"), (2, "iou")):
        fig.add_trace(
            go.Scatter(
                x=[r["lr"] for r in rows],
                y=[r[metric] for r in rows],
                mode="markers",
                marker={"size": 7, "opacity": 0.5, "color": "#888"},
                name="one seed",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=[s["lr"] for s in stats],
                y=[s[metric] for s in stats],
                error_y={"type": "data", "array": [s[f"{metric}_sd"] for s in stats]},
                mode="lines+markers",
                line={"width": 3, "color": "#1f77b4" if metric == "cer" else "#d62728"},
                name="mean CER (± s.d.)" if metric == "cer" else "mean IoU (± s.d.)",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            type="log", title_text="shared learning rate (vision = projector = LLM)", row=1, col=col
        )
    # CER spans two decades (a base that reads, a model that broke): a log axis shows both.
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(
        title="Demo: one shared LR, 200 steps, baseline otherwise", height=450, template="plotly_white"
    )
    return fig


def _sweep(mode: str, seed: int, trials: int | None, steps: int | None, root: Path) -> dict[str, Any]:
    """One real sweep of the demo; its front's hypervolume."""
    from vlsweep.export import trial_params
    from vlsweep.params import DEFAULT_SPACE
    from vlsweep.pareto import hypervolume
    from vlsweep.results import SweepResults
    from vlsweep.search.config import SweepConfig, load_sweep_config
    from vlsweep.search.sweep import run_sweep

    cfg, base_dir = load_sweep_config(DEMO)
    raw = cfg.model_dump(mode="json", exclude={"storage"})
    space = dict(DEFAULT_SPACE)
    if mode == "tied":
        space.update(lr_vision={"same_as": "lr_llm"}, lr_projector={"same_as": "lr_llm"})
    raw.update(name=f"{mode}-s{seed}", space=space, output_dir=str(root / "runs" / f"{mode}-s{seed}"))
    raw["search"]["seed"] = seed
    if trials is not None:
        raw["search"]["trials"] = trials
    if steps is not None:
        raw["budget"]["steps"] = steps
    cfg = SweepConfig.model_validate(raw)
    url = f"sqlite:///{root / 'studies.db'}"
    t0 = time.perf_counter()
    with (root / f"{mode}-s{seed}.log").open("w") as log:
        study = run_sweep(cfg, base_dir, url, log=lambda line: print(line, file=log, flush=True))
    results = SweepResults.of(study)
    front = sorted([t.values[0], t.values[1]] for t in results.front)
    return {
        "mode": mode,
        "seed": seed,
        "hypervolume": hypervolume(front, REFERENCE, ["minimize", "maximize"]) if front else 0.0,
        "front": front,
        # What the front trials ran with (a tied trial's vision and projector rates are its lr_llm).
        "front_params": [
            {"cer": t.values[0], "iou": t.values[1], **trial_params(cfg, t).to_dict()}
            for t in sorted(results.front, key=lambda t: t.values[0])
        ],
        "complete": len(results.complete),
        "points": [[t.values[0], t.values[1]] for t in results.complete],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def tied(seeds: list[int], trials: int | None, steps: int | None, root: Path) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        for mode in ("separate", "tied"):
            row = _sweep(mode, seed, trials, steps, root)
            print(json.dumps({k: v for k, v in row.items() if k != "points"}), flush=True)
            rows.append(row)
    return rows


def tied_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    hv = {m: [r["hypervolume"] for r in rows if r["mode"] == m] for m in ("separate", "tied")}
    med = {m: statistics.median(v) for m, v in hv.items()}
    sd = {m: _sd(v) for m, v in hv.items()}
    margin = med["separate"] - med["tied"]
    return {
        "seeds": len(hv["separate"]),
        "median_separate": med["separate"],
        "median_tied": med["tied"],
        "sd_separate": sd["separate"],
        "sd_tied": sd["tied"],
        "margin": margin,
        "separate_wins_by_2sd": margin > 2 * max(sd.values()),
    }


def tied_table(rows: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["mode"], r["seed"]): r for r in rows}
    lines = ["| sampler seed | HV, 3 separate LRs | HV, one tied LR | front size (separate / tied) |"]
    lines.append("|---|---|---|---|")
    for s in seeds:
        a, b = by[("separate", s)], by[("tied", s)]
        lines.append(
            f"| {s} | {a['hypervolume']:.4f} | {b['hypervolume']:.4f} | "
            f"{len(a['front'])} / {len(b['front'])} |"
        )
    v = tied_verdict(rows)
    lines.append(f"| median | **{v['median_separate']:.4f}** | **{v['median_tied']:.4f}** | |")
    lines.append(f"| s.d. over seeds | {v['sd_separate']:.4f} | {v['sd_tied']:.4f} | |")
    return "\n".join(lines)


def tied_figure(rows: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = {"separate": "#1f77b4", "tied": "#ff7f0e"}
    for r in rows:
        pts = sorted(r["front"])
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                line={"shape": "hv", "color": colors[r["mode"]]},
                name=f"{r['mode']} LRs, seed {r['seed']} (HV {r['hypervolume']:.3f})",
            )
        )
    fig.update_layout(
        title="Demo fronts: three module LRs against one tied LR (the same trials, steps and sampler)",
        xaxis_title="CER (lower is better)",
        yaxis_title="IoU (higher is better)",
        height=500,
        template="plotly_white",
    )
    return fig


# The docs' tables (benchmarks/doc_tables.py), from the summary file.
def doc_scan(summary: dict[str, Any]) -> str:
    return scan_table(summary["scan"])


def doc_scan_verdict(summary: dict[str, Any]) -> str:
    return scan_verdict_table(summary["scan"])


def doc_tied(summary: dict[str, Any]) -> str:
    return tied_table(summary["tied_vs_separate"])


def doc_tied_verdict(summary: dict[str, Any]) -> str:
    v = tied_verdict(summary["tied_vs_separate"])
    met = "**met**" if v["separate_wins_by_2sd"] else "**not met**"
    return (
        f"Separate minus tied median: {v['margin']:+.4f} over {v['seeds']} sampler seeds; twice the larger "
        f"seed standard deviation: {2 * max(v['sd_separate'], v['sd_tied']):.4f}: {met}.\n"
    )


def update_summary(path: Path, **parts: Any) -> dict[str, Any]:
    """Read ``path`` (if any), replace the given parts, write it back."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(parts, reference_point=REFERENCE)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("scan", "tied"))
    ap.add_argument("--seeds", default=None, help="default: 0,1,2 for scan, 0,1,2,3,4 for tied")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=None, help="default: the demo's")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, one seed")
    ap.add_argument("--json", type=Path, help="the summary file to write this part into")
    ap.add_argument("--png", type=Path, help="write the plot here (needs Chromium)")
    ap.add_argument("--replot", action="store_true", help="only draw --png from the rows in --json")
    args = ap.parse_args()
    if args.replot:
        if not (args.json and args.png):
            ap.error("--replot needs --json (the rows) and --png")
        summary = json.loads(args.json.read_text())
        from vlsweep.report import write_png

        rows = summary["scan"] if args.what == "scan" else summary["tied_vs_separate"]
        write_png((scan_figure if args.what == "scan" else tied_figure)(rows), args.png, width=1100)
        print(f"wrote {args.png}")
        return
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.what == "scan" else "0,1,2,3,4")).split(",")]
    steps, trials = None, args.trials
    if args.quick:
        seeds, steps, trials = seeds[:1], 10, 3
    if args.what == "scan":
        rows = scan([1e-4, 1e-2] if args.quick else LRS, seeds, args.workers, steps)
        print(scan_table(rows))
        print(scan_verdict_table(rows))
        fig = scan_figure(rows)
        parts = {"scan": rows, "scan_verdict": scan_verdict(rows)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = tied(seeds, trials, steps, Path(tmp))
        print(tied_table(rows))
        fig = tied_figure(rows)
        parts = {"tied_vs_separate": rows, "tied_verdict": tied_verdict(rows)}
    if args.json:
        update_summary(args.json, **parts)
        print(f"wrote {args.json}")
    if args.png:
        from vlsweep.report import write_png

        write_png(fig, args.png, width=1100)
        print(f"wrote {args.png}")
    assert all(math.isfinite(r.get("cer", r.get("hypervolume", 0.0))) for r in rows)


if __name__ == "__main__":
    main()
