"""Search quality on problems with known Pareto fronts: which sampler should be the default?

Problems from pymoo with their true fronts: ZDT1, ZDT2, ZDT3 (5 variables) and DTLZ2
with two objectives (6 variables), all objectives minimized. Each sampler runs the same
trial budget per problem and seed with 2 trials in flight at a time (as a sweep with
``max_concurrent: 2``): ask two, then tell the older and ask again. The samplers:

- ``random``, ``tpe`` (vlsweep's default), ``nsga2``, ``gp``: exactly what
  ``search.sampler`` builds (``vlsweep.search.sampling.make_sampler``: Optuna's samplers with
  their defaults, reading the study once per ask);
- ``ray-optunasearch``: Ray Tune's stock ``OptunaSearch`` with its defaults (only metric,
  mode and seed given), driven through its Searcher API (``suggest`` /
  ``on_trial_complete``) the way Tune drives it.

Score: hypervolume of the non-dominated points found divided by the hypervolume of the
true front (pymoo's ``pareto_front()``), both against the problem's reference point
(``REFS``: 1.1 x each objective's worst value over the domain); ``vlsweep.pareto``
computes the hypervolume. Medians over seeds.

    python benchmarks/known_fronts.py [--trials 100] [--seeds 5] [--png docs/benchmarks/known_fronts.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

# Fewer variables than the usual 30 (ZDT) / 11 (DTLZ2): a sweep has ~10 parameters and
# ~100 trials, and with 30 variables no sampler gets near the front in 100 trials.
PROBLEMS = {
    "zdt1": {"n_var": 5},
    "zdt2": {"n_var": 5},
    "zdt3": {"n_var": 5},
    "dtlz2": {"n_var": 6, "n_obj": 2},
}
# Reference points: 1.1 x the worst value each objective takes anywhere in the domain
# (ZDT: f1 <= 1, f2 <= g <= 10; DTLZ2 with 5 distance variables: f <= 1 + 5/4), so every
# evaluated point counts and the ratio says how close to the true front each sampler gets.
REFS = {"zdt1": (1.1, 11.0), "zdt2": (1.1, 11.0), "zdt3": (1.1, 11.0), "dtlz2": (2.475, 2.475)}
SAMPLERS = ("random", "tpe", "nsga2", "gp", "ray-optunasearch")
CHECKPOINTS = (25, 50, 100)


def hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of ``points`` (every objective minimized) against ``ref``."""
    from vlsweep.pareto import hypervolume

    return hypervolume(points.tolist(), ref.tolist(), ["minimize"] * len(ref))


def true_front(problem: Any) -> np.ndarray:
    """pymoo's true front, dense enough that its hypervolume is exact to ~1e-3."""
    if problem.name().lower().startswith("dtlz"):
        from pymoo.util.ref_dirs import get_reference_directions

        return np.asarray(problem.pareto_front(get_reference_directions("uniform", 2, n_partitions=1999)))
    if problem.name().lower() == "zdt3":  # a disconnected front: points per region
        return np.asarray(problem.pareto_front(n_points=2000))
    return np.asarray(problem.pareto_front(n_pareto_points=2000))


def two_in_flight(problem: Any, trials: int, ask: Any, tell: Any) -> list[np.ndarray]:
    """Ask two, then tell the older and ask again, as a sweep with max_concurrent 2 does.

    ``ask()`` returns (handle, x); ``tell(handle, f)`` reports the objectives of x."""
    found: list[np.ndarray] = []
    pending: list[tuple[Any, np.ndarray]] = []
    for _ in range(trials):
        pending.append(ask())
        while pending and (len(pending) == 2 or len(found) + len(pending) == trials):
            handle, x = pending.pop(0)
            f = np.asarray(problem.evaluate(x), dtype=float)
            tell(handle, f)
            found.append(f)
    return found


def run_optuna(problem: Any, kind: str, seed: int, trials: int) -> list[np.ndarray]:
    import optuna

    from vlsweep.search.sampling import make_sampler

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(kind, seed))

    def ask() -> tuple[Any, np.ndarray]:
        trial = study.ask()
        return trial, np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(problem.n_var)])

    return two_in_flight(problem, trials, ask, lambda t, f: study.tell(t, [float(f[0]), float(f[1])]))


def run_ray_stock(problem: Any, seed: int, trials: int) -> list[np.ndarray]:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    space = {f"x{i}": tune.uniform(0.0, 1.0) for i in range(problem.n_var)}
    searcher = OptunaSearch(metric=["f1", "f2"], mode=["min", "min"], seed=seed)
    searcher.set_search_properties(None, None, space)  # what Tune does with param_space
    ids = iter(range(trials))

    def ask() -> tuple[str, np.ndarray]:
        tid = f"t{next(ids)}"
        cfg = searcher.suggest(tid)
        return tid, np.array([cfg[f"x{i}"] for i in range(problem.n_var)])

    def tell(tid: str, f: np.ndarray) -> None:
        searcher.on_trial_complete(tid, {"f1": float(f[0]), "f2": float(f[1])})

    return two_in_flight(problem, trials, ask, tell)


def measure(args: argparse.Namespace) -> tuple[dict, dict, dict, list[str], list[int]]:
    from pymoo.problems import get_problem

    samplers = args.samplers.split(",")
    checkpoints = [c for c in CHECKPOINTS if c <= args.trials] or [args.trials]
    if args.trials not in checkpoints:
        checkpoints.append(args.trials)
    # ratio[problem][sampler][checkpoint] -> list over seeds
    ratio: dict[str, dict[str, dict[int, list[float]]]] = {}
    seconds: dict[str, float] = {s: 0.0 for s in samplers}
    for name in args.problems.split(","):
        problem = get_problem(name, **PROBLEMS[name])
        ref = np.asarray(REFS[name])
        best = hv(true_front(problem), ref)
        ratio[name] = {s: {c: [] for c in checkpoints} for s in samplers}
        for kind in samplers:
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                if kind == "ray-optunasearch":
                    found = run_ray_stock(problem, seed, args.trials)
                else:
                    found = run_optuna(problem, kind, seed, args.trials)
                seconds[kind] += time.perf_counter() - t0
                for c in checkpoints:
                    ratio[name][kind][c].append(hv(np.asarray(found[:c]), ref) / best)
            med = statistics.median(ratio[name][kind][args.trials])
            print(f"{name:6s} {kind:17s} median HV ratio at {args.trials} trials: {med:.3f}", flush=True)

    runs = {s: args.seeds * len(ratio) for s in samplers}
    return ratio, seconds, runs, samplers, checkpoints


def merge(saved: list[dict]) -> tuple[dict, dict, dict]:
    """The ratios, seconds and run counts of several ``--save`` files, as one run's."""
    ratio: dict[str, dict[str, dict[int, list[float]]]] = {}
    seconds: dict[str, float] = {}
    runs: dict[str, int] = {}
    for one in saved:
        for name, by in one["ratio"].items():
            for kind, cps in by.items():
                ratio.setdefault(name, {})[kind] = {int(c): v for c, v in cps.items()}
        for kind, sec in one["seconds"].items():
            seconds[kind] = seconds.get(kind, 0.0) + sec
            runs[kind] = runs.get(kind, 0) + one["runs"][kind]
    return ratio, seconds, runs


# How the tables name the default and the stock Ray searcher.
LABELS = {"tpe": "tpe (default)", "ray-optunasearch": "ray-optunasearch (stock)"}


def table(ratio: dict, seconds: dict, runs: dict) -> tuple[str, dict[str, float]]:
    """The median hypervolume ratio of each sampler on each problem at the last trial count,
    over all problems, and the seconds per run, as markdown; and the overall medians."""
    samplers = [k for k in SAMPLERS if all(k in by for by in ratio.values())]
    trials = max(max(cps) for by in ratio.values() for cps in by.values())
    seeds = len(next(iter(next(iter(ratio.values())).values()))[trials])
    lines = [
        f"| median HV ratio at {trials} trials, {seeds} seeds | "
        + " | ".join(LABELS.get(s, s) for s in samplers)
        + " |",
        "|---|" + "---|" * len(samplers),
    ]
    for problem, by in ratio.items():
        lines.append(
            f"| {problem.upper()} | "
            + " | ".join(f"{statistics.median(by[s][trials]):.3f}" for s in samplers)
            + " |"
        )
    overall = {s: statistics.median([v for by in ratio.values() for v in by[s][trials]]) for s in samplers}
    lines.append("| all runs (median) | " + " | ".join(f"{v:.3f}" for v in overall.values()) + " |")
    per_run = [f"{seconds[s] / runs[s]:.1f}" for s in samplers]
    lines.append(f"| seconds per {trials}-trial run | " + " | ".join(per_run) + " |")
    return "\n".join(lines) + "\n", overall


def doc_table(base: dict) -> str:
    """docs/benchmarks.md's table: the base samplers' run (docs/benchmarks/known_fronts_base.json)
    and gp's (known_fronts_gp.json, the slow one, run apart), merged as ``--merge`` merges them."""
    gp = json.loads((Path(__file__).parents[1] / "docs" / "benchmarks" / "known_fronts_gp.json").read_text())
    return table(*merge([base, gp]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--png", default=None, help="write the hypervolume-ratio plot here")
    ap.add_argument("--save", default=None, help="also write the ratios as JSON (to --merge later)")
    ap.add_argument(
        "--merge", nargs="+", default=None, help="report from saved JSON files instead of running"
    )
    ap.add_argument("--quick", action="store_true", help="zdt1, 2 seeds, 20 trials, no gp (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.seeds, args.problems = 20, 2, "zdt1"
        args.samplers = "random,tpe,nsga2,ray-optunasearch"

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.simplefilter("ignore")
    if args.merge:
        ratio, seconds, runs = merge([json.loads(Path(path).read_text()) for path in args.merge])
        samplers = [k for k in SAMPLERS if all(k in by for by in ratio.values())]
        checkpoints = sorted(next(iter(next(iter(ratio.values())).values())))
    else:
        ratio, seconds, runs, samplers, checkpoints = measure(args)
        if args.save:
            Path(args.save).write_text(json.dumps({"ratio": ratio, "seconds": seconds, "runs": runs}))
    text, overall = table(ratio, seconds, runs)
    print("\nhypervolume ratio to the true front's (reference points in REFS):\n" + text, end="")
    if "tpe" in overall and "ray-optunasearch" in overall:
        ok = overall["tpe"] >= overall["ray-optunasearch"]
        print(f"default (tpe) >= stock Ray OptunaSearch: {ok}")
    if args.png:
        _plot(ratio, samplers, checkpoints, args.png)


def _plot(ratio: dict, samplers: list[str], checkpoints: list[int], path: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from vlsweep.report import write_png

    names = list(ratio)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for i, name in enumerate(names, start=1):
        for j, s in enumerate(samplers):
            ys = [statistics.median(ratio[name][s][c]) for c in checkpoints]
            fig.add_trace(
                go.Scatter(
                    x=checkpoints,
                    y=ys,
                    mode="lines+markers",
                    name=s,
                    legendgroup=s,
                    showlegend=i == 1,
                    line={"color": ["#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#d62728"][j % 5]},
                ),
                row=1,
                col=i,
            )
        fig.update_xaxes(title_text="trials", row=1, col=i)
    fig.update_yaxes(title_text="HV / true-front HV (median)", row=1, col=1)
    fig.update_layout(
        title="Hypervolume ratio against trials, 2 in flight", template="plotly_white", height=400
    )
    write_png(fig, Path(path), width=1300, height=420)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
