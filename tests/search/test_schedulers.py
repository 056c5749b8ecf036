"""MO-ASHA's decisions on hand-made rung tables (no Ray trials needed)."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from vlsweep.pareto import crowding_distance, non_dominated_fronts, rank
from vlsweep.search.schedulers import MOASHAScheduler, rungs

GO, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _sched(**kw) -> MOASHAScheduler:
    return MOASHAScheduler(
        metrics=["cer", "iou"], modes=["min", "max"], max_t=90, grace_period=10, reduction_factor=3, **kw
    )


def _r(steps: int, cer: float, iou: float) -> dict:
    return {"steps": steps, "cer": cer, "iou": iou}


def test_rungs_are_geometric_below_the_budget():
    assert rungs(10, 3, 90) == [10, 30]
    assert rungs(10, 3, 91) == [10, 30, 90]
    assert _sched().rungs[0].milestone == 10


def test_non_dominated_sorting_and_crowding():
    pts = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.6, 0.6], [0.95, 0.95]]
    assert non_dominated_fronts(pts) == [[0, 1, 2], [3], [4]]
    crowd = crowding_distance([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    assert crowd[0] == crowd[2] == math.inf and crowd[1] == pytest.approx(2.0)
    assert rank(pts) == [0, 2, 1, 3, 4]


def test_dominated_trials_stop_and_front_trials_go_on():
    s = _sched()
    assert s.on_result("a", _r(10, 0.5, 0.5)) == GO  # alone at the rung: top 1 of 1
    assert s.on_result("b", _r(10, 0.6, 0.4)) == STOP  # dominated by a; top 1 of 2 is a
    assert s.on_result("c", _r(10, 0.4, 0.6)) == GO  # dominates a: best of 3
    assert s.on_result("d", _r(10, 0.45, 0.7)) == GO  # on the front, a boundary point of it: top 2 of 4
    # 5 recorded, keep 2: the front is c (0.4, 0.6) and d (0.45, 0.7); e is dominated by both.
    assert s.on_result("e", _r(10, 0.5, 0.55)) == STOP
    # A later rung is judged among those that reached it only.
    assert s.on_result("a", _r(30, 0.3, 0.6)) == GO


def test_ties_in_the_cut_front_go_to_the_most_isolated_then_the_first_recorded():
    s = _sched()
    for tid, (cer, iou) in zip("abc", [(0.1, 0.1), (0.5, 0.5), (0.9, 0.9)], strict=True):
        s.on_result(tid, _r(10, cer, iou))
    # Now 4 trials on one front, keep 2: the boundary points (infinite crowding) win.
    assert s.on_result("d", _r(10, 0.3, 0.3)) == STOP
    s2 = _sched()
    assert s2.on_result("x", _r(10, 0.2, 0.2)) == GO
    assert s2.on_result("y", _r(10, 0.2, 0.2)) == STOP  # identical: the first recorded keeps its place


def test_arrival_order_matters_as_in_asynchronous_halving():
    """A mediocre trial that arrives first goes on; the same result arriving last stops."""
    good = [("g1", 0.2, 0.8), ("g2", 0.25, 0.7), ("g3", 0.3, 0.75)]
    early = _sched()
    assert early.on_result("m", _r(10, 0.6, 0.3)) == GO
    for tid, cer, iou in good:
        early.on_result(tid, _r(10, cer, iou))
    late = _sched()
    for tid, cer, iou in good:
        late.on_result(tid, _r(10, cer, iou))
    assert late.on_result("m", _r(10, 0.6, 0.3)) == STOP


def test_results_without_objectives_failed_trials_and_the_full_budget():
    s = _sched()
    assert s.on_result("a", {"steps": 10, "train/loss": 1.0}) == GO  # a training-curve row
    assert s.on_result("a", {"steps": 10, "cer": float("nan"), "iou": 0.5}) == GO  # not recorded
    assert s.rungs[0].recorded == {}
    assert s.on_result("a", _r(12, 0.5, 0.5)) == GO
    assert s.on_result("b", _r(10, 0.4, 0.6)) == GO
    # a fails mid-rung (between 10 and 30): Tune removes it; its rung-10 record stays.
    s.on_trial_remove(None, type("T", (), {"trial_id": "a"})())
    assert s.on_result("c", _r(10, 0.45, 0.55)) == STOP  # 3 recorded, keep 1 (b)
    # A trial whose first report skips a rung is recorded at every rung it passed.
    assert s.on_result("d", _r(30, 0.1, 0.9)) == GO
    assert "d" in s.rungs[0].recorded and "d" in s.rungs[1].recorded
    # The last rung is below the budget: a full-budget result is never stopped.
    assert s.on_result("b", _r(90, 0.99, 0.0)) == GO


def test_a_trial_run_again_is_not_judged_again_at_a_rung_it_passed():
    """After a worker death or a lost node Tune runs the trial again (on_trial_error, then
    on_trial_add): a re-run from step 0 reports the first rung again, and stronger trials
    recorded there since must not stop it now; its next rung is judged as usual."""

    class _Trial:
        trial_id = "a"

    s = _sched()
    assert s.on_result("a", _r(10, 0.5, 0.5)) == GO  # alone at the rung: passes
    for i, cer in enumerate((0.1, 0.2, 0.3, 0.4)):  # four better trials arrive
        s.on_result(f"b{i}", _r(10, cer, 0.9))
    s.on_trial_error(None, _Trial())
    s.on_trial_add(None, _Trial())
    assert s.on_result("a", _r(10, 0.5, 0.5)) == GO
    assert s.rungs[0].recorded["a"] == [0.5, -0.5]  # recorded once, as first reported
    assert s.on_result("a", _r(30, 0.5, 0.5)) == GO  # the next rung: judged (alone there)
