"""The replayed sweep: a search method proposes configs, the nearest recorded curves answer,
in simulated time (training steps) with several trials at once; and the figure it records,
the hypervolume of the full-budget trials' front."""

from __future__ import annotations

import heapq
from typing import Any

from mf_replay.table import MAX_T, Point, Table, at, recorded

REF = (1.0, 0.0)  # cer, iou: the natural worst values


def hypervolume(points: list[Point]) -> float:
    """Hypervolume of (cer, iou) points against ``REF``."""
    from vlsweep.pareto import hypervolume

    return hypervolume(points, REF, ["minimize", "maximize"])


class Method:
    """One search method as the replay drives it: propose a config, hear each evaluation
    (True: stop the trial there), hear the end of a trial."""

    def propose(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def result(self, handle: Any, steps: int, point: Point, measured: dict[str, float]) -> bool:
        """``point``: (cer, iou) at ``steps``; ``measured``: all the evaluation recorded."""
        return False

    def finish(self, handle: Any, point: Point | None) -> None:
        """``point``: the full-budget values, or None for a config that diverged."""


def replay(method: Method, table: Table, budget: int, workers: int) -> tuple[list[tuple[int, float]], int]:
    """Run one sweep in simulated time; returns ([(steps spent, hypervolume of the
    full-budget front)] at each full-budget trial, number of trials started)."""
    evals = sorted({p["steps"] for r in table.rows for p in r["curve"]})
    spent, history, front = 0, [(0, 0.0)], []
    running: list[tuple[int, int, Any, dict, int]] = []  # (time of next eval, id, handle, row, steps done)
    started = 0

    def start(now: int) -> None:
        nonlocal started
        handle, params = method.propose()
        heapq.heappush(running, (now + evals[0], started, handle, table.nearest(params), 0))
        started += 1

    for _ in range(workers):
        start(0)
    while running and spent < budget:
        clock, tid, handle, row, done = heapq.heappop(running)
        step = next(s for s in evals if s > done)
        spent += step - done
        value = at(row, step)
        if value is None:  # the config diverged here
            method.finish(handle, None)
            start(clock)
        elif step >= MAX_T:
            method.finish(handle, value)
            front.append(value)
            history.append((spent, hypervolume(front)))
            start(clock)
        elif method.result(handle, step, value, recorded(row, step) or {}):
            start(clock)
        else:
            heapq.heappush(
                running, (clock + next(s for s in evals if s > step) - step, tid, handle, row, step)
            )
    return history, started
