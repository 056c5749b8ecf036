"""The figures of each method over the seeds: hypervolume at equally spaced budgets, steps
to 95% of full-budget TPE's final hypervolume, and the verdict against the issue's bar."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from mf_replay.methods import OURS, PEERS

BUDGETS = 20  # the equally spaced budgets the methods are compared at


def hv_at(history: list[tuple[int, float]], steps: float) -> float:
    return max((hv for s, hv in history if s <= steps), default=0.0)


def steps_to(history: list[tuple[int, float]], target: float, budget: float = math.inf) -> float:
    """Steps spent when the hypervolume first reached ``target``; infinite if not within ``budget``."""
    return next((s for s, hv in history if hv >= target and s <= budget), math.inf)


def summarize(runs: dict[str, list[tuple[list, int]]], budget: int) -> dict[str, Any]:
    """The headline figures of every method (see the module docstring)."""
    if "tpe-full" not in runs:
        raise SystemExit("error: --methods: the figures are relative to tpe-full; include it")
    tpe_final = [hv_at(h, budget) for h, _ in runs["tpe-full"]]
    budgets = [budget * (k + 1) / BUDGETS for k in range(BUDGETS)]
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        to95 = [
            steps_to(h, 0.95 * final, budget) / budget for (h, _), final in zip(seeds, tpe_final, strict=True)
        ]
        median = statistics.median(to95)
        out[name] = {
            "steps_to_95pct": None if math.isinf(median) else round(median, 4),
            "steps_to_95pct_per_seed": [None if math.isinf(x) else round(x, 4) for x in to95],
            "median_hv": [round(statistics.median(hv_at(h, b) for h, _ in seeds), 4) for b in budgets],
            # The spread over seeds at each budget (quartiles), to weigh a difference of medians.
            "hv_quartiles": [
                [round(float(q), 4) for q in np.percentile([hv_at(h, b) for h, _ in seeds], [25, 75])]
                for b in budgets
            ],
            "final_hv_median": round(statistics.median(hv_at(h, budget) for h, _ in seeds), 4),
            "trials_started_median": statistics.median(n for _, n in seeds),
        }
    return out


def verdict(methods: dict[str, Any]) -> dict[str, Any]:
    """The issue's bar: MO-ASHA with its better proposer within 33% of the steps, and at
    least every peer's median hypervolume at each of the 20 budgets."""
    ours = [m for m in OURS if m in methods]
    if not ours:
        return {}
    # The better proposer: the larger median hypervolume over the budgets (area under the
    # curve), then the fewer steps to 95%.
    best = max(
        ours,
        key=lambda m: (
            statistics.fmean(methods[m]["median_hv"]),
            -(methods[m]["steps_to_95pct"] if methods[m]["steps_to_95pct"] is not None else math.inf),
        ),
    )
    below = {
        peer: [
            k + 1
            for k, (a, b) in enumerate(
                zip(methods[best]["median_hv"], methods[peer]["median_hv"], strict=True)
            )
            if a < b
        ]
        for peer in PEERS
        if peer in methods
    }
    s95 = methods[best]["steps_to_95pct"]
    ours = methods[best]
    return {
        "mo_asha": best,
        "within_33pct": s95 is not None and s95 <= 0.33,
        "budgets_below_peer": {p: ks for p, ks in below.items() if ks},
        "at_least_every_peer": not any(below.values()),
        # How far below, against how much the median moves between seeds there.
        "largest_shortfall": {
            p: round(max(methods[p]["median_hv"][k - 1] - ours["median_hv"][k - 1] for k in ks), 4)
            for p, ks in below.items()
            if ks
        },
        "median_iqr": round(
            statistics.median(q75 - q25 for q25, q75 in ours.get("hv_quartiles", [[0, 0]])), 4
        ),
    }
