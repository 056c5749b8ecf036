"""End to end on the CPU: the demo sweep with and without MO-ASHA at the same wall clock.

Both runs are the embedded demo (builtin tiny Qwen2-VL, synthetic data, 200 steps per
trial, TPE, 2 trials at a time) with a trial budget too large to reach, stopped by
``search.time_budget_s``; one with ``early_stopping: none``, one with ``mo-asha``
(rungs 22 and 66 steps, eta 3). Reported per run: full-budget trials, pruned trials, and
the hypervolume of the full-budget front against reference point cer = 1, iou = 0
(``vlsweep.pareto``). Runs alternate order per round.

    python benchmarks/e2e_moasha.py [--seconds 300] [--rounds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run(tmp: Path, name: str, early_stopping: str, seconds: float) -> dict[str, float]:
    import optuna
    import yaml

    from vlsweep.pareto import hypervolume
    from vlsweep.results import SweepResults
    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.sweep import run_sweep

    demo = Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml"
    raw = yaml.safe_load(demo.read_text())
    raw["name"] = name
    raw["search"].update(trials=1000, early_stopping=early_stopping, time_budget_s=seconds)
    raw["output_dir"] = str(tmp / "runs" / name)
    cfg, base_dir = load_sweep_config(demo, raw)
    url = f"sqlite:///{tmp / 'e2e.db'}"
    t0 = time.perf_counter()
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    wall = time.perf_counter() - t0
    res = SweepResults.of(optuna.load_study(study_name=name, storage=url))
    states = [t.state.name for t in res.trials]
    hv = hypervolume([list(t.values) for t in res.complete], [1.0, 0.0], res.directions)
    return {
        "wall": wall,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "hv": hv,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="60 s per run (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 60.0

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="vlsweep-e2e-"))
    rows = []
    for r in range(args.rounds):
        order = ("none", "mo-asha") if r % 2 == 0 else ("mo-asha", "none")
        for es in order:
            res = run(tmp, f"e2e-{es}-{r}", es, args.seconds)
            rows.append((es, res))
            print(
                f"round {r} early_stopping={es:8s}: {res['wall']:.0f} s, {res['complete']} full-budget, "
                f"{res['pruned']} pruned, hypervolume {res['hv']:.4f}",
                flush=True,
            )
    print(f"\nsame wall clock ({args.seconds:.0f} s per sweep, 2 CPUs); hypervolume ref cer=1, iou=0")
    print("| early_stopping | full-budget trials | pruned | hypervolume |")
    print("|---|---|---|---|")
    for es, res in rows:
        print(f"| {es} | {res['complete']} | {res['pruned']} | {res['hv']:.4f} |")


if __name__ == "__main__":
    main()
