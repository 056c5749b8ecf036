"""The recorded learning curves a replay draws from (``benchmarks/data/learning_curves.jsonl``,
written by ``benchmarks/learning_curves.py``), and the recorded config nearest to a point a
method proposes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parents[1] / "data" / "learning_curves.jsonl"
MAX_T = 200  # the steps of a full-budget trial: the curves' last evaluation

Point = tuple[float, float]  # (cer, iou)


class Table:
    """Recorded curves with 1-NN lookup in the normalized search space."""

    def __init__(self, rows: list[dict[str, Any]], space: Any):
        from vlsweep.spaces import CategoricalChoice, FloatRange

        self.rows = rows
        # Per searched parameter: name, log scale?, and the (lo, hi) it is normalized by.
        self.cols: list[tuple[str, bool, float, float]] = []
        columns = []
        for k, entry in space.searched.items():
            if not all(k in r["params"] for r in rows):
                continue
            log = isinstance(entry, FloatRange) and entry.log or isinstance(entry, CategoricalChoice)
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


def recorded(row: dict[str, Any], steps: int) -> dict[str, float] | None:
    """Everything the evaluation at ``steps`` measured, or None if the config failed before."""
    return next((point for point in row["curve"] if point["steps"] == steps), None)


def at(row: dict[str, Any], steps: int) -> Point | None:
    """(cer, iou) recorded at ``steps``, or None if the config failed before."""
    point = recorded(row, steps)
    return None if point is None else (point["cer"], point["iou"])
