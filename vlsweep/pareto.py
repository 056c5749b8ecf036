"""Pareto dominance, non-dominated sorting, crowding distance and hypervolume: the one
implementation the study's front, the results, ``vlsweep status`` and MO-ASHA use.

Points are objective vectors with a direction per objective ("minimize"/"maximize");
the sorting and the hypervolume are moocore's (C, any number of objectives). Crowding
distance is NSGA-II's, written here because moocore has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Vector = Sequence[float]


def to_min(values: Vector, directions: Sequence[str]) -> list[float]:
    """The vector with every objective turned into one to minimize."""
    return [float(v) if d == "minimize" else -float(v) for v, d in zip(values, directions, strict=True)]


def dominates(a: Vector, b: Vector, directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    x, y = to_min(a, directions), to_min(b, directions)
    return all(p <= q for p, q in zip(x, y, strict=True)) and any(p < q for p, q in zip(x, y, strict=True))


def weakly_dominates(a: Vector, b: Vector, directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective."""
    return all(p <= q for p, q in zip(to_min(a, directions), to_min(b, directions), strict=True))


def non_dominated_fronts(points: Sequence[Vector]) -> list[list[int]]:
    """Indices of ``points`` (all objectives minimized) by Pareto front, best first; equal
    points share a front. Each front lists its indices in order."""
    if not points:
        return []
    import moocore
    import numpy as np

    ranks = moocore.pareto_rank(np.asarray(points, dtype=float))
    return [[int(i) for i in np.flatnonzero(ranks == r)] for r in sorted(set(ranks.tolist()))]


def front(points: Sequence[Vector], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (equal points both stay), in order."""
    if not points:
        return []
    import moocore
    import numpy as np

    keep = moocore.is_nondominated(np.asarray([to_min(p, directions) for p in points]), keep_weakly=True)
    return [int(i) for i in np.flatnonzero(keep)]


def crowding_distance(points: Sequence[Vector]) -> list[float]:
    """NSGA-II crowding distance of each point within one front (boundaries: infinite)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            dist[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist


def rank(points: Sequence[Vector]) -> list[int]:
    """Indices of ``points`` (minimized) from best to worst: front, then crowding distance
    (larger first), then index."""
    out: list[int] = []
    for members in non_dominated_fronts(points):
        crowd = crowding_distance([points[i] for i in members])
        out += [i for _, i in sorted(zip(crowd, members, strict=True), key=lambda ci: (-ci[0], ci[1]))]
    return out


def hypervolume(points: Sequence[Vector], ref: Vector, directions: Sequence[str]) -> float:
    """Hypervolume of ``points`` against ``ref``, both in the objectives' own directions;
    points not strictly better than ``ref`` in every objective add nothing."""
    import moocore
    import numpy as np

    r = to_min(ref, directions)
    pts = [
        p for p in (to_min(v, directions) for v in points) if all(a < b for a, b in zip(p, r, strict=True))
    ]
    if not pts:
        return 0.0
    return float(moocore.hypervolume(np.asarray(pts, dtype=float), ref=np.asarray(r, dtype=float)))


def knee(points: Sequence[Vector], directions: Sequence[str]) -> int:
    """The index of the front point closest (Euclidean) to the ideal point after min-max
    normalizing each objective over the points to [0, 1], 0 being the best value seen.

    One of several knee definitions; this one treats the objectives as equally important
    on the scale the front itself spans. Ties go to the first point.
    """
    if len(points) == 1:
        return 0
    cols = [list(c) for c in zip(*(to_min(p, directions) for p in points), strict=True)]
    lo = [min(c) for c in cols]
    span = [(max(c) - min(c)) or 1.0 for c in cols]

    def distance(j: int) -> float:
        return math.sqrt(sum(((col[j] - low) / sp) ** 2 for col, low, sp in zip(cols, lo, span, strict=True)))

    return min(range(len(points)), key=lambda j: (distance(j), j))
