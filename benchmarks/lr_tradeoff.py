"""Does the demo show the trade-off, and do per-module learning rates pay off?

Two measurements on the embedded demo (builtin tiny Qwen2-VL, synthetic OCR + grounding
data, 200 steps, vision LoRA on, projector fully trained):

``scan``: one shared learning rate for the vision tower, the projector and the language
model, scanned over a log grid, every other hyperparameter at the baseline's value (rank
8, alpha 16, equal task weights); each point trained with several seeds (the LoRA init
and the batch order). CER and IoU against the LR, in a table and a plot.

``tied``: the hypervolume of the front that the real sweep (``vlsweep launch``'s
``run_sweep`` on a local Ray, TPE, 16 trials, 2 at a time) finds with the default space
(three separate module LRs) against the same space with ``lr_vision`` and
``lr_projector`` tied to ``lr_llm`` (``{same_as: lr_llm}``), for several sampler seeds.
Hypervolume against cer = 1, iou = 0 (moocore).

    python benchmarks/lr_tradeoff.py scan [--seeds 0,1,2] [--png docs/benchmarks/lr_scan.png]
    python benchmarks/lr_tradeoff.py tied [--seeds 0,1,2] [--png docs/benchmarks/lr_tied.png]
    python benchmarks/lr_tradeoff.py scan --quick    # CI smoke run: 2 LRs, 1 seed, 10 steps
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "vlsweep" / "configs" / "demo-sweep.yaml"
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]

_STATE: dict[str, Any] = {}


def _init(steps: int | None) -> None:
    import torch

    from vlsweep import demo
    from vlsweep.search.config import load_sweep_config
    from vlsweep.trials import load_base, load_data

    torch.set_num_threads(1)
    cfg, base_dir = load_sweep_config(DEMO)
    spec = demo.resolve(cfg.train_config())
    if steps is not None:
        spec.budget.steps = steps
    _STATE.update(spec=spec, base=load_base(spec.model), data=load_data(spec.data, base_dir))


def _train(job: tuple[float, int]) -> dict[str, Any]:
    from vlsweep.params import BASELINE, TrialParams
    from vlsweep.trials import run_trial

    lr, seed = job
    spec = _STATE["spec"].model_copy(update={"seed": seed})
    params = TrialParams.of({**BASELINE, "lr_vision": lr, "lr_projector": lr, "lr_llm": lr})
    t0 = time.perf_counter()
    try:
        result = run_trial(params, spec.budget, spec=spec, data=_STATE["data"], base=_STATE["base"])
        metrics = {k: result[k] for k in ("cer", "iou", "acc_iou50", "parse_fail_rate")}
    except FloatingPointError as exc:  # a diverged run is a result too
        metrics = {"cer": 1.0, "iou": 0.0, "error": str(exc)}
    return {"lr": lr, "seed": seed, **metrics, "seconds": round(time.perf_counter() - t0, 1)}


def scan(lrs: list[float], seeds: list[int], workers: int, steps: int | None) -> list[dict[str, Any]]:
    from vlsweep.demo import ensure_builtin

    ensure_builtin("tiny-qwen2-vl")  # once, here, not in every worker
    jobs = [(lr, seed) for lr in lrs for seed in seeds]
    rows = []
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(steps,)) as pool:
        for row in pool.imap_unordered(_train, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["lr"], r["seed"]))


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def scan_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shared LR | CER (mean ± s.d. over seeds) | IoU (mean ± s.d.) | runs |", "|---|---|---|---|"]
    for lr in sorted({r["lr"] for r in rows}):
        cer = [r["cer"] for r in rows if r["lr"] == lr]
        iou = [r["iou"] for r in rows if r["lr"] == lr]
        lines.append(
            f"| {lr:.0e} | {statistics.mean(cer):.3f} ± {_sd(cer):.3f} | "
            f"{statistics.mean(iou):.3f} ± {_sd(iou):.3f} | {len(cer)} |"
        )
    return "\n".join(lines)


def scan_figure(rows: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("CER (lower is better)", "IoU (higher is better)"))
    lrs = sorted({r["lr"] for r in rows})
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
                x=lrs,
                y=[statistics.mean(r[metric] for r in rows if r["lr"] == lr) for lr in lrs],
                mode="lines+markers",
                line={"width": 3, "color": "#1f77b4" if metric == "cer" else "#d62728"},
                name="mean CER" if metric == "cer" else "mean IoU",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            type="log", title_text="shared learning rate (vision = projector = LLM)", row=1, col=col
        )
    fig.update_layout(
        title="Demo: one shared LR, 200 steps, baseline otherwise", height=450, template="plotly_white"
    )
    return fig


def _sweep(mode: str, seed: int, trials: int, steps: int | None, root: Path) -> dict[str, Any]:
    """One real sweep of the demo; its front's hypervolume."""
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
    raw["search"].update(seed=seed, trials=trials)
    if steps is not None:
        raw["budget"]["steps"] = steps
    cfg = SweepConfig.model_validate(raw)
    url = f"sqlite:///{root / 'studies.db'}"
    t0 = time.perf_counter()
    with (root / f"{mode}-s{seed}.log").open("w") as log:
        study = run_sweep(cfg, base_dir, url, log=lambda line: print(line, file=log, flush=True))
    results = SweepResults.of(study)
    front = [[t.values[0], t.values[1]] for t in results.front]
    hv = hypervolume(front, [1.0, 0.0], ["minimize", "maximize"]) if front else 0.0
    return {
        "mode": mode,
        "seed": seed,
        "hypervolume": hv,
        "front": front,
        "complete": len(results.complete),
        "points": [[t.values[0], t.values[1]] for t in results.complete],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def tied(seeds: list[int], trials: int, steps: int | None, root: Path) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        for mode in ("separate", "tied"):
            row = _sweep(mode, seed, trials, steps, root)
            print(json.dumps({k: v for k, v in row.items() if k != "points"}), flush=True)
            rows.append(row)
    return rows


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
    med = {m: statistics.median(by[(m, s)]["hypervolume"] for s in seeds) for m in ("separate", "tied")}
    lines.append(f"| median | **{med['separate']:.4f}** | **{med['tied']:.4f}** | |")
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
        title="Demo fronts: three module LRs against one tied LR (16 trials each)",
        xaxis_title="CER (lower is better)",
        yaxis_title="IoU (higher is better)",
        height=500,
        template="plotly_white",
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("scan", "tied"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, one seed")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--png", type=Path, help="write the plot here (needs Chromium)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = None
    if args.quick:
        seeds, steps = seeds[:1], 10
    if args.what == "scan":
        rows = scan([1e-4, 1e-2] if args.quick else LRS, seeds, args.workers, steps)
        print(scan_table(rows))
        fig = scan_figure(rows)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = tied(seeds, 3 if args.quick else args.trials, steps, Path(tmp))
        print(tied_table(rows))
        fig = tied_figure(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.png:
        from vlsweep.report import write_png

        write_png(fig, args.png, width=1100)
        print(f"wrote {args.png}")
    assert all(math.isfinite(r.get("cer", r.get("hypervolume", 0.0))) for r in rows)


if __name__ == "__main__":
    main()
