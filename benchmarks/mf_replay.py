"""Multi-fidelity search on recorded learning curves: MO-ASHA vs full-budget TPE.

Replays sweeps over ``benchmarks/data/learning_curves.jsonl`` (written by
``learning_curves.py``: (cer, iou) every 20 steps of 200 for random configs of the demo)
in simulated time, the way tabular HPO benchmarks do: a sampler proposes a point of the
demo's search space, the nearest recorded config (1-NN in the normalized space: log
scale for log-scaled parameters) stands in for it, and its recorded curve is what the
trial reports. Time is training steps; ``--workers`` trials run at once and finish in
the order their steps dictate, so MO-ASHA sees results asynchronously as on Ray.

Methods, each over the same total budget of training steps:

- ``tpe-full``: every trial runs 200 steps; TPE (vlsweep's default sampler) is told
  each trial's final values;
- ``moasha-random``: random proposals, ``MOASHAScheduler`` stops trials at rungs
  (``--grace`` and ``--eta``; default rungs 20, 60, 180 steps with eta 3);
- ``moasha-tpe``: TPE proposals under MO-ASHA; a stopped trial is told PRUNED, a
  finished one COMPLETE, as in a sweep.

Score: hypervolume (moocore) of the full-budget trials' front against reference point
cer = 1, iou = 0, as a function of training steps spent; medians over seeds.

    python benchmarks/mf_replay.py [--seeds 10] [--budget-trials 48] [--workers 4] [--png FILE]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data" / "learning_curves.jsonl"
MAX_T, GRACE, ETA = 200, 20, 3
REF = (1.0, 0.0)  # cer, iou: the natural worst values


class Table:
    """Recorded curves with 1-NN lookup in the normalized search space."""

    def __init__(self, rows: list[dict[str, Any]], space: Any):
        from vlsweep.spaces import CategoricalSpec, FloatSpec

        self.rows = rows
        # Per searched parameter: name, log scale?, and the (lo, hi) it is normalized by.
        self.cols: list[tuple[str, bool, float, float]] = []
        columns = []
        for k, spec in space.specs.items():
            if not all(k in r["params"] for r in rows):
                continue
            log = isinstance(spec, FloatSpec) and spec.log or isinstance(spec, CategoricalSpec)
            v = np.array([float(r["params"][k]) for r in rows])
            v = np.log(v) if log else v
            self.cols.append((k, log, float(v.min()), float(v.max())))
            columns.append(v)
        self.x = np.stack([self._norm(c, v) for c, v in zip(self.cols, columns, strict=True)], 1)

    @staticmethod
    def _norm(col: tuple[str, bool, float, float], v: Any) -> Any:
        _, _, lo, hi = col
        return (v - lo) / ((hi - lo) or 1.0)

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        q = np.array(
            [self._norm(c, math.log(float(params[c[0]])) if c[1] else float(params[c[0]])) for c in self.cols]
        )
        return self.rows[int(np.argmin(((self.x - q) ** 2).sum(1)))]


def at(row: dict[str, Any], steps: int) -> tuple[float, float] | None:
    """(cer, iou) recorded at ``steps``, or None if the config failed before."""
    for point in row["curve"]:
        if point["steps"] == steps:
            return point["cer"], point["iou"]
    return None


def hypervolume(points: list[tuple[float, float]]) -> float:
    import moocore

    pts = np.array([[c, -i] for c, i in points if c < REF[0] and i > REF[1]])
    return float(moocore.hypervolume(pts, ref=np.array([REF[0], -REF[1]]))) if len(pts) else 0.0


def simulate(
    method: str,
    table: Table,
    space: Any,
    settings: dict,
    seed: int,
    budget: int,
    workers: int,
    grace: int = GRACE,
    eta: int = ETA,
) -> tuple[list[tuple[int, float]], int]:
    """Run one replayed sweep; returns ([(steps spent, hypervolume of the full-budget
    front)] at each full-budget trial, number of trials started)."""
    import optuna

    from vlsweep.search.schedulers import MOASHAScheduler
    from vlsweep.search.study import make_sampler

    sampler = make_sampler("random" if method == "moasha-random" else "tpe", seed)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    sched = (
        MOASHAScheduler(
            metrics=["cer", "iou"],
            modes=["min", "max"],
            max_t=MAX_T,
            grace_period=grace,
            reduction_factor=eta,
        )
        if method.startswith("moasha")
        else None
    )
    evals = sorted({p["steps"] for r in table.rows for p in r["curve"]})
    spent, history, front_pts = 0, [(0, 0.0)], []
    running: list[tuple[int, int, Any, dict, int]] = []  # (time of next eval, id, trial, row, steps done)
    clock, next_id = 0, 0

    def start(now: int) -> None:
        nonlocal next_id
        trial = study.ask()
        row = table.nearest(space.suggest(trial, settings))
        heapq.heappush(running, (now + evals[0], next_id, trial, row, 0))
        next_id += 1

    for _ in range(workers):
        start(0)
    while running and spent < budget:
        clock, tid, trial, row, done = heapq.heappop(running)
        step = next(s for s in evals if s > done)
        spent += step - done
        value = at(row, step)
        if value is None:  # the config diverged here
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            start(clock)
            continue
        stop = False
        if sched is not None:
            stop = sched.on_result(str(tid), {"steps": step, "cer": value[0], "iou": value[1]}) == "STOP"
        if step >= MAX_T:
            study.tell(trial, list(value))
            front_pts.append(value)
            history.append((spent, hypervolume(front_pts)))
            start(clock)
        elif stop:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            start(clock)
        else:
            nxt = next(s for s in evals if s > step)
            heapq.heappush(running, (clock + nxt - step, tid, trial, row, step))
    return history, next_id


def hv_at(history: list[tuple[int, float]], steps: float) -> float:
    return max((hv for s, hv in history if s <= steps), default=0.0)


def steps_to(history: list[tuple[int, float]], target: float) -> float:
    return next((s for s, hv in history if hv >= target), math.inf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-trials", type=int, default=48, help="budget = this many full-budget trials")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--png", default=None)
    ap.add_argument("--grace", type=int, default=GRACE, help="first rung, in steps (a multiple of 20)")
    ap.add_argument("--eta", type=int, default=ETA, help="reduction factor")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 12 trials of budget (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.budget_trials = 2, 12

    import optuna

    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.schedulers import rungs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.simplefilter("ignore")
    cfg, _ = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    space, settings = cfg.parsed_space(), cfg.settings()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    table = Table(rows, space)
    budget = args.budget_trials * MAX_T
    methods = ("tpe-full", "moasha-random", "moasha-tpe")
    runs, started = {}, {}
    for m in methods:
        out = [
            simulate(m, table, space, settings, s, budget, args.workers, args.grace, args.eta)
            for s in range(args.seeds)
        ]
        runs[m], started[m] = [h for h, _ in out], statistics.median(n for _, n in out)

    full = runs["tpe-full"]
    final = statistics.median(hv_at(h, budget) for h in full)
    print(
        f"{len(rows)} recorded configs; budget {budget} steps = {args.budget_trials} full trials; "
        f"{args.workers} workers; {args.seeds} seeds; MO-ASHA rungs "
        f"{rungs(args.grace, args.eta, MAX_T)} (eta {args.eta}); reference point cer=1, iou=0"
    )
    print(f"full-budget TPE: median final hypervolume {final:.4f}\n")
    print("| method | trials started | HV at 25% of steps | at 40% | at 100% | steps to 95% of TPE's final |")
    print("|---|---|---|---|---|---|")
    for m in methods:
        hv = {f: statistics.median(hv_at(h, f * budget) for h in runs[m]) for f in (0.25, 0.4, 1.0)}
        to95 = statistics.median(steps_to(h, 0.95 * final) for h in runs[m])
        frac = to95 / budget
        cells = [f"{started[m]:.0f}", *(f"{hv[f]:.4f}" for f in (0.25, 0.4, 1.0)), f"{to95:.0f} ({frac:.2f})"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    for m in ("moasha-random", "moasha-tpe"):
        to95 = statistics.median(steps_to(h, 0.95 * final) for h in runs[m])
        at_equal = statistics.median(hv_at(h, budget) for h in runs[m])
        print(
            f"{m}: 95% of TPE's final HV within 40% of its steps: {to95 <= 0.4 * budget}; "
            f"HV at equal steps >= TPE's: {at_equal >= final}"
        )
    if args.png:
        _plot(runs, budget, args.png)


def _plot(runs: dict, budget: int, path: str) -> None:
    import plotly.graph_objects as go

    from vlsweep.report import write_png

    xs = np.linspace(0, budget, 49)
    fig = go.Figure()
    for m, hs in runs.items():
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[statistics.median(hv_at(h, x) for h in hs) for x in xs],
                name=m,
                mode="lines",
                line={"shape": "hv"},
            )
        )
    fig.update_layout(
        title="Hypervolume of the full-budget front against training steps (median over seeds)",
        xaxis_title="training steps spent (all trials)",
        yaxis_title="hypervolume (ref cer=1, iou=0)",
        template="plotly_white",
        height=420,
    )
    write_png(fig, Path(path), width=1000, height=420)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
