"""What a person reads: the docs' table (``benchmarks/doc_tables.py`` renders it from the
JSON file) and the plot of hypervolume against steps."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from mf_replay.methods import PEERS
from mf_replay.score import BUDGETS, hv_at


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (``benchmarks/doc_tables.py``), also what the command prints."""
    methods = summary["methods"]
    cols = (4, 7, 10, 20)  # of the 20 budgets: 20%, 35%, 50%, 100%
    lines = [
        f"{summary['configs']} recorded configs; budget {summary['budget_steps']} steps "
        f"(= {summary['budget_trials']} full-budget trials); {summary['workers']} workers; "
        f"{summary['seeds']} seeds; rungs {summary['rungs']} (eta {summary['eta']}); medians over seeds\n",
        "| method | trials started | HV at 20% of steps | at 35% | at 50% | at 100% "
        "| steps to 95% of TPE's final HV |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        s95 = "never (median)" if m["steps_to_95pct"] is None else f"{m['steps_to_95pct']:.0%}"
        cells = [f"{m['trials_started_median']:.0f}", *(f"{m['median_hv'][c - 1]:.4f}" for c in cols), s95]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    v = summary["verdict"]
    if not v:
        return "\n".join(lines) + "\n"
    below = (
        "; ".join(
            f"{p} at budgets {ks} (by up to {v['largest_shortfall'][p]:.4f})"
            for p, ks in v["budgets_below_peer"].items()
        )
        or "none"
    )
    lines.append(
        f"\nMO-ASHA's better proposer: {v['mo_asha']}; within 33% of the steps: {v['within_33pct']}; "
        f"median HV at least every peer's at all {BUDGETS} budgets: {v['at_least_every_peer']} "
        f"(below a peer: {below}); the median spread between seeds (interquartile range of "
        f"{v['mo_asha']}'s hypervolume over the {BUDGETS} budgets) is {v['median_iqr']:.4f}."
    )
    if summary.get("left_out"):
        lines.append(f"Left out: {summary['left_out']}.")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[tuple[list, int]]], budget: int, path: Path) -> None:
    import plotly.graph_objects as go

    from vlsweep.report import write_png

    xs = np.geomspace(0.02 * budget, budget, 120)  # log scale: the methods part in the first fifth
    fig = go.Figure()
    for name, seeds in runs.items():
        fig.add_trace(
            go.Scatter(
                x=xs / budget,
                y=[statistics.median(hv_at(h, x) for h, _ in seeds) for x in xs],
                name=name,
                mode="lines",
                line={"shape": "hv", "dash": "dash" if name in PEERS else "solid"},
            )
        )
    fig.update_layout(
        title="Hypervolume of the full-budget front against training steps (median over seeds)",
        xaxis_title="training steps spent, as a share of full-budget TPE's (log scale)",
        xaxis_type="log",
        xaxis_tickformat=".0%",
        xaxis_tickvals=[0.02, 0.05, 0.1, 0.2, 0.33, 0.5, 1.0],
        yaxis_title="hypervolume (ref cer=1, iou=0)",
        yaxis_range=[0.6, 0.96],
        template="plotly_white",
        height=460,
    )
    write_png(fig, path, width=1000, height=460)
    print(f"wrote {path}")
