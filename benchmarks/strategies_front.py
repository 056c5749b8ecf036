"""Does searching the strategies move the front? Hypervolume with them against without.

For each seed, sweeps of the demo with the same trial budget, the same objectives (CER,
IoU, forgetting on the demo's retention set) and the same sampler: one without any
strategy (the default space alone), and one per "with" arm: ``all`` turns on every
``strategies`` key of the config (examples/strategies-sweep.yaml), ``only:KEY[+KEY]`` just
those keys (one strategy against none, rather than all of them). Every arm of a seed is
compared with the same "without" sweep, run once. Each front's hypervolume is computed
against one reference point shared by all the runs (CER 1 and IoU 0, the metrics
table's worst; forgetting: the worst value any run saw), so the numbers compare across
runs and arms. Prints one row per seed and arm and the mean difference.

    python benchmarks/strategies_front.py [--seeds 0 1 2] [--trials 40] [--steps 200]
        [--arms all only:loss_balance] [--config FILE] [--json docs/benchmarks/strategies_front.json]
        [--workdir DIR]

``--config`` compares on another sweep file with a ``strategies`` section (its relative
paths are read from its folder); ``search.seed``, ``search.trials`` and ``budget.steps``
are the script's. ``--workdir`` keeps the sweeps' database and runs in DIR (default a new
temporary folder): run again with the same DIR after an interruption and the finished
sweeps are read back, the unfinished one continues where it stopped. ``--json`` writes the
figures for the docs' tables (``benchmarks/doc_tables.py``), one part per arm (``all``,
``only_loss_balance``, ...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def arm_keys(arm: str, configured: dict[str, bool], ap: argparse.ArgumentParser) -> dict[str, bool]:
    """The ``strategies`` section of a "with" arm."""
    from vlsweep.params import STRATEGIES

    if arm == "all":
        return configured
    if not arm.startswith("only:"):
        ap.error(f"--arms {arm}: give `all` or `only:KEY` (KEY+KEY for several)")
    keys = arm.removeprefix("only:").split("+")
    unknown = [k for k in keys if k not in STRATEGIES]
    if unknown:
        ap.error(
            f"--arms {arm}: {', '.join(unknown)} not a strategies key; the keys are {', '.join(STRATEGIES)}"
        )
    return {k: k in keys for k in STRATEGIES}


def part_name(arm: str) -> str:
    return "all" if arm == "all" else "only_" + "_".join(arm.removeprefix("only:").split("+"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--arms", nargs="+", default=["all"], help="`all` and/or `only:KEY`: the arms with")
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "strategies-sweep.yaml")
    ap.add_argument("--json", type=Path, help="write the figures into this file (read and updated)")
    ap.add_argument("--workdir", type=Path, help="keep (and continue) the sweeps here")
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
    arms = {arm: arm_keys(arm, base["strategies"], ap) for arm in args.arms}
    tmp = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp / 'fronts.db'}"
    values: dict[tuple[int, str], list[list[float]]] = {}
    for seed in args.seeds:
        for arm in ["without", *arms]:
            name = f"s{seed}-{part_name(arm) if arm != 'without' else 'without'}"
            raw = dict(base, name=name, output_dir=str(tmp / "runs" / name))
            raw["search"] = {**base["search"], "seed": seed, "trials": args.trials}
            raw["budget"] = {**base["budget"], "steps": args.steps}
            if arm == "without":
                raw.pop("strategies")
            else:
                raw["strategies"] = arms[arm]
            cfg, base_dir = load_sweep_config(args.config, data=raw)
            print(f"seed {seed}, {arm}: {args.trials} trials ...", flush=True)
            study = run_sweep(cfg, base_dir, url, resume=True, log=lambda _m: None)
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

    def front_of(points: list[list[float]]) -> dict[str, Any]:
        front = pareto.non_dominated_fronts([pareto.to_min(v, dirs) for v in points])[0] if points else []
        best = {
            n: (min if d == "minimize" else max)(v[i] for v in points)
            for i, (n, d) in enumerate(zip(names, dirs, strict=True))
        }
        return {"hv": pareto.hypervolume(points, ref, dirs), "size": len(front), "best": best}

    summary = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    for arm, keys in arms.items():
        print(f"\n{arm}\n{'seed':>4} {'with':>10} {'without':>10} {'with - without':>15}")
        rows = []
        for seed in args.seeds:
            w, wo = front_of(values[(seed, arm)]), front_of(values[(seed, "without")])
            rows.append(
                {
                    "seed": seed,
                    "with": w["hv"],
                    "without": wo["hv"],
                    "diff": w["hv"] - wo["hv"],
                    "front_with": w["size"],
                    "front_without": wo["size"],
                    "best_with": w["best"],
                    "best_without": wo["best"],
                }
            )
            print(f"{seed:>4} {w['hv']:10.5f} {wo['hv']:10.5f} {rows[-1]['diff']:15.5f}")
        diffs = [r["diff"] for r in rows]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        print(f"mean difference {statistics.mean(diffs):.5f} (sd {sd:.5f} over {len(diffs)} seeds)")
        summary[part_name(arm)] = {
            "objectives": names,
            "reference_point": ref,
            "trials": args.trials,
            "steps": args.steps,
            "keys": sorted(k for k, on in keys.items() if on),
            "rows": rows,
            "mean_diff": statistics.mean(diffs),
            "sd_diff": sd,
        }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


def doc_table(part: dict[str, Any]) -> str:
    """The docs' table of one comparison (benchmarks/doc_tables.py)."""
    names = part["objectives"]
    ref = ", ".join(f"{n} {v:.3g}" for n, v in zip(names, part["reference_point"], strict=True))
    lines = [
        "| seed | HV with | HV without | with - without | front size with / without |",
        "|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        lines.append(
            f"| {r['seed']} | {r['with']:.5f} | {r['without']:.5f} | {r['diff']:+.5f} | "
            f"{r['front_with']} / {r['front_without']} |"
        )
    lines.append(
        f"\nMean with - without **{part['mean_diff']:+.5f}** (s.d. {part['sd_diff']:.5f} over "
        f"{len(part['rows'])} seeds); {part['trials']} trials of {part['steps']} steps per sweep; "
        f"strategies keys on in the arm with: {', '.join(part['keys'])}; reference point {ref}."
    )
    best = [
        f"seed {r['seed']}: "
        + ", ".join(f"{n} {r['best_with'][n]:.3f} / {r['best_without'][n]:.3f}" for n in names)
        for r in part["rows"]
    ]
    lines.append("Best single values, with / without: " + "; ".join(best) + ".")
    return "\n".join(lines) + "\n"


def doc_all(summary: dict[str, Any]) -> str:
    return doc_table(summary["all"])


def doc_loss_balance(summary: dict[str, Any]) -> str:
    return doc_table(summary["only_loss_balance"])


if __name__ == "__main__":
    main()
