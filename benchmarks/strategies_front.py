"""Does searching the strategies move the front? Hypervolume with them against without.

For each seed, two sweeps of the demo with the same trial budget, the same objectives
(CER, IoU, forgetting on the demo's retention set) and the same sampler: one with every
``strategies`` key on (examples/strategies-sweep.yaml), one with the default space alone.
Each front's hypervolume is computed against one reference point shared by all the runs
(CER 1 and IoU 0, the metrics table's worst; forgetting: the worst value any run saw), so
the numbers compare across runs. Prints one row per seed and the mean difference.

    python benchmarks/strategies_front.py [--seeds 0 1 2] [--trials 40] [--steps 200]
        [--config FILE] [--only KEY ...]

``--config`` compares on another sweep file with a ``strategies`` section (its relative
paths are read from its folder); ``search.seed``, ``search.trials`` and ``budget.steps``
are the script's. ``--only loss_balance`` turns on that key alone in the arm with (one
strategy against none, rather than all of them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "strategies-sweep.yaml")
    ap.add_argument(
        "--only", nargs="+", metavar="KEY", help="turn on only these strategies keys in the arm with"
    )
    args = ap.parse_args()

    import optuna

    from vlsweep import pareto
    from vlsweep.metrics import METRICS
    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.sweep import run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = yaml.safe_load(args.config.read_text())
    if not base.get("strategies"):
        ap.error(f"--config {args.config}: no `strategies` section, so both arms would be the same sweep")
    if args.only:
        from vlsweep.params import STRATEGIES

        unknown = [k for k in args.only if k not in STRATEGIES]
        if unknown:
            ap.error(
                f"--only {' '.join(unknown)}: not a strategies key; the keys are {', '.join(STRATEGIES)}"
            )
        base["strategies"] = {k: k in args.only for k in STRATEGIES}
    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'fronts.db'}"
    values: dict[tuple[int, str], list[list[float]]] = {}
    for seed in args.seeds:
        for arm in ("with", "without"):
            raw = dict(base, name=f"s{seed}-{arm}", output_dir=str(tmp / "runs" / f"s{seed}-{arm}"))
            raw["search"] = {**base["search"], "seed": seed, "trials": args.trials}
            raw["budget"] = {**base["budget"], "steps": args.steps}
            if arm == "without":
                raw.pop("strategies")
            cfg, base_dir = load_sweep_config(args.config, data=raw)
            print(f"seed {seed}, strategies {arm}: {args.trials} trials ...", flush=True)
            study = run_sweep(cfg, base_dir, url, log=lambda _m: None)
            done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
            values[(seed, arm)] = [list(t.values) for t in done]
    names = list(base["objectives"])
    dirs = [METRICS[n].direction for n in names]
    ref = []
    for i, (name, d) in enumerate(zip(names, dirs, strict=True)):
        worst = METRICS[name].worst
        seen = [v[i] for vs in values.values() for v in vs]
        ref.append(worst if worst is not None else (max(seen) if d == "minimize" else min(seen)))
    print(f"\nreference point {dict(zip(names, ref, strict=True))}")
    print(f"{'seed':>4} {'with':>10} {'without':>10} {'with - without':>15}")
    diffs = []
    for seed in args.seeds:
        hv = {arm: pareto.hypervolume(values[(seed, arm)], ref, dirs) for arm in ("with", "without")}
        diffs.append(hv["with"] - hv["without"])
        print(f"{seed:>4} {hv['with']:10.5f} {hv['without']:10.5f} {diffs[-1]:15.5f}")
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    print(f"mean difference {statistics.mean(diffs):.5f} (sd {sd:.5f} over {len(diffs)} seeds)")


if __name__ == "__main__":
    main()
