"""The command line: ``python benchmarks/mf_replay [--quick] ...`` (the package's docstring
says what it runs)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

if not __package__:  # run as a directory: its parent, benchmarks/, holds the package mf_replay
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def main() -> None:
    import mf_replay
    from mf_replay.methods import METHODS, make_method
    from mf_replay.peers import load_hub, ray_asha, sha_error
    from mf_replay.report import doc_table, plot
    from mf_replay.score import BUDGETS, summarize, verdict
    from mf_replay.simulator import replay
    from mf_replay.table import DATA, MAX_T, Table

    ap = argparse.ArgumentParser(
        description=mf_replay.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-trials", type=int, default=48, help="budget = this many full-budget trials")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--grace", type=int, default=None, help="first rung, in steps (default: the sweep's default)"
    )
    ap.add_argument("--eta", type=int, default=3, help="reduction factor")
    ap.add_argument(
        "--optunahub-registry", type=Path, default=None, help="a local optunahub-registry checkout"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--pace", type=float, default=0.001, help="seconds of sleep per replayed step under Ray")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--png", type=Path, default=None, help="write the plot here")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 12 trials of budget (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.budget_trials = 2, 12

    import optuna

    from vlsweep.search.backend import local_ray
    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.schedulers import rung_steps, rungs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    cfg, _ = load_sweep_config(Path(__file__).parents[2] / "vlsweep" / "configs" / "demo-sweep.yaml")
    space, settings = cfg.search_space, cfg.settings()
    if args.grace is None:
        cfg.search.early_stopping, cfg.search.reduction_factor = "mo-asha", args.eta
        milestones = rung_steps(cfg)
    else:
        milestones = rungs(args.grace, args.eta, MAX_T)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    evals = {p["steps"] for r in rows for p in r["curve"]}
    if not set(milestones) <= evals:
        raise SystemExit(
            f"error: rungs {milestones} are not all evaluation steps of {args.data}; pass --grace"
        )
    table = Table(rows, space)
    budget = args.budget_trials * MAX_T
    hub, left_out = (None, None)
    if "optunahub-multimetric" in args.methods:
        hub, left_out = load_hub(args.optunahub_registry)
    methods = [m for m in args.methods if m != "optunahub-multimetric" or hub is not None]

    runs: dict[str, list[tuple[list, int]]] = {}
    for name in methods:
        t0 = time.perf_counter()
        if name == "ray-asha-scalarized":
            with local_ray(num_cpus=args.workers):
                runs[name] = [
                    ray_asha(table, space, s, budget, args.workers, milestones, args.eta, args.pace)
                    for s in range(args.seeds)
                ]
        else:
            runs[name] = [
                replay(
                    make_method(name, space, settings, s, milestones, args.eta, hub),
                    table,
                    budget,
                    args.workers,
                )
                for s in range(args.seeds)
            ]
        print(f"{name}: {args.seeds} seeds in {time.perf_counter() - t0:.0f} s", flush=True)

    figures = summarize(runs, budget)
    summary = {
        "data": str(args.data),
        "configs": len(rows),
        "seeds": args.seeds,
        "budget_trials": args.budget_trials,
        "budget_steps": budget,
        "workers": args.workers,
        "rungs": milestones,
        "eta": args.eta,
        "budgets": [round((k + 1) / BUDGETS, 3) for k in range(BUDGETS)],
        "optuna": optuna.__version__,
        "left_out": left_out,
        "optunahub_with_successive_halving": None if hub is None else (sha_error(hub) or "runs"),
        "methods": figures,
    }
    summary["verdict"] = verdict(figures)
    print()
    print(doc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.png:
        plot(runs, budget, args.png)


if __name__ == "__main__":
    main()
