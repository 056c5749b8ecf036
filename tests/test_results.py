"""The data behind the report and export, on hand-made studies (no drawing, no Ray)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from vlsweep.errors import UserInputError
from vlsweep.pareto import hypervolume
from vlsweep.results import (
    SweepResults,
    hypervolume_history,
    importances,
    knee,
    lr_against_objectives,
    pareto_points,
    parse_where,
    pick,
    reference_point,
)

LR = FloatDistribution(1e-5, 1e-2, log=True)


def _study(points, constraints=None) -> optuna.Study:
    """points: (cer, iou) or None for a FAIL; trial i gets lr_llm 10**-(2 + i/5)."""
    study = optuna.create_study(directions=["minimize", "maximize"], study_name="s")
    study.set_metric_names(["cer", "iou"])
    for i, p in enumerate(points):
        lr = 10 ** -(2 + i / 5)
        attrs = {"constraints": [constraints[i]]} if constraints else {}
        if p is None:
            study.add_trial(
                create_trial(state=TrialState.FAIL, params={"lr_llm": lr}, distributions={"lr_llm": LR})
            )
            continue
        study.add_trial(
            create_trial(
                values=list(p),
                params={"lr_llm": lr, "lr_projector": lr / 2},
                distributions={"lr_llm": LR, "lr_projector": LR},
                user_attrs={"baseline": True} if i == 0 else {},
                system_attrs=attrs,
            )
        )
    return study


def test_pareto_points_mark_front_dominated_infeasible_and_picked():
    #            0 baseline   1 front     2 front     3 dominated  4 infeasible (would be front)
    points = [(0.5, 0.2), (0.2, 0.3), (0.4, 0.6), (0.45, 0.25), (0.1, 0.9)]
    res = SweepResults.of(_study(points, constraints=[-1, -1, -1, -1, 0.5]))
    picked = res.trial(2)
    by = {p.number: p for p in pareto_points(res, picked)}
    assert {n: p.kind for n, p in by.items()} == {
        0: "dominated",
        1: "front",
        2: "front",
        3: "dominated",
        4: "infeasible",
    }
    assert by[2].picked and not by[1].picked and by[0].baseline
    assert [t.number for t in res.front] == [1, 2]


def test_knee_is_nearest_to_the_ideal_after_normalizing_the_front():
    # Normalized over the front, (0.3, 0.8) is at distance ~0.32 from the ideal (0.1, 0.9);
    # the extremes are at 1.0.
    res = SweepResults.of(_study([(0.1, 0.1), (0.3, 0.8), (0.9, 0.9), (0.6, 0.85)]))
    assert knee(res.front, res.directions).number == 1
    assert pick(res, "knee").number == 1
    assert pick(res, "best:cer").number == 0
    assert pick(res, "best:iou").number == 2


def test_where_filters_first_and_an_empty_result_is_a_clear_error():
    res = SweepResults.of(_study([(0.1, 0.1), (0.3, 0.8), (0.9, 0.9), (0.6, 0.85)]))
    assert pick(res, "best:cer", parse_where(["iou>=0.84"], res.metric_names)).number == 3
    assert pick(res, "best:iou", parse_where(["cer<0.5", "iou>=0.05"], res.metric_names)).number == 1
    with pytest.raises(UserInputError, match=r"satisfies --where cer<=0.01"):
        pick(res, "knee", parse_where(["cer<=0.01"], res.metric_names))
    with pytest.raises(UserInputError) as err:
        parse_where(["loss<=1", "cer=<2"], res.metric_names)
    assert len(err.value.problems) == 2 and "unknown metric 'loss'" in err.value.problems[0]


def test_pick_trial_n_checks_state_and_filter():
    res = SweepResults.of(_study([(0.1, 0.1), None, (0.3, 0.8)]))
    assert pick(res, "trial:2").number == 2
    with pytest.raises(UserInputError, match="trial 1 is FAIL"):
        pick(res, "trial:1")
    with pytest.raises(UserInputError, match="has no trial 7"):
        pick(res, "trial:7")
    with pytest.raises(UserInputError, match="does not satisfy --where cer<=0.2"):
        pick(res, "trial:2", parse_where(["cer<=0.2"], res.metric_names))
    with pytest.raises(UserInputError, match="choose knee"):
        pick(res, "middle")


def test_hypervolume_against_the_stated_reference_point():
    # Minimize cer, maximize iou, reference (cer=1, iou=0): two boxes 0.5*0.5 and 0.25*0.8
    # overlapping in 0.25*0.5.
    hv = hypervolume([[0.5, 0.5], [0.75, 0.8]], [1.0, 0.0], ["minimize", "maximize"])
    assert hv == pytest.approx(0.5 * 0.5 + 0.25 * 0.8 - 0.25 * 0.5)
    res = SweepResults.of(_study([(0.5, 0.5), None, (0.75, 0.8), (0.9, 0.1)]))
    assert reference_point(res) == [1.0, 0.0]
    history = hypervolume_history(res)
    assert [n for n, _ in history] == [0, 1, 2, 3]
    assert [round(v, 6) for _, v in history] == [0.25, 0.25, 0.325, 0.325]


def test_hypervolume_history_equals_recomputing_from_every_point_so_far():
    """The incremental history (front updates only) against the definition, on random
    points with ties, duplicates and points beyond the reference."""
    import random

    rng = random.Random(7)
    points = [
        None if rng.random() < 0.1 else (round(rng.uniform(0, 1.2), 1), round(rng.uniform(0, 1), 1))
        for _ in range(80)
    ]
    study = optuna.create_study(directions=["minimize", "maximize"])
    for p in points:
        study.add_trial(create_trial(state=TrialState.FAIL) if p is None else create_trial(values=list(p)))
    res = SweepResults.of(study)
    ref = reference_point(res)
    expected, seen = [], []
    for i, p in enumerate(points):
        if p is not None:
            seen.append(list(p))
        expected.append((i, hypervolume(seen, ref, res.directions)))
    assert hypervolume_history(res, ref) == [(n, pytest.approx(v, abs=1e-12)) for n, v in expected]


def test_reference_point_covers_a_cer_above_one():
    res = SweepResults.of(_study([(1.4, 0.1), (0.5, 0.3)]))
    assert reference_point(res) == [1.4, 0.0]


def test_importances_and_learning_rates_per_objective():
    points = [(0.1 + 0.05 * i, 0.5 + 0.01 * (i % 3)) for i in range(12)]
    res = SweepResults.of(_study(points))
    imp = importances(res)
    assert set(imp) == {"cer", "iou"}
    assert set(imp["cer"]) == {"lr_llm", "lr_projector"}
    assert all(v >= 0 and math.isfinite(v) for v in imp["cer"].values())
    lrs = lr_against_objectives(res)
    assert set(lrs) == {"lr_llm", "lr_projector"}
    assert [r["trial"] for r in lrs["lr_llm"]] == list(range(12))
    assert lrs["lr_llm"][3]["cer"] == pytest.approx(0.25) and lrs["lr_llm"][3]["lr"] == pytest.approx(
        10**-2.6
    )


def test_an_objective_that_never_varied_has_no_importances():
    res = SweepResults.of(_study([(0.1 * i, 0.0) for i in range(1, 8)]))
    imp = importances(res)
    assert imp["iou"] == {} and set(imp["cer"]) == {"lr_llm", "lr_projector"}


def test_the_front_tables_show_peak_gpu_memory_only_where_trials_ran_on_a_gpu():
    from vlsweep.report import _front_table
    from vlsweep.status import front_table

    study = _study([(0.5, 0.5), (0.2, 0.6), (0.6, 0.9)])
    cpu = SweepResults.of(study)
    assert "gpu_mem" not in front_table(cpu) and "GPU memory" not in _front_table(cpu, None)
    on_gpu = optuna.create_study(directions=["minimize", "maximize"], study_name="g")
    on_gpu.set_metric_names(["cer", "iou"])
    for t, gib in zip(study.get_trials(), (11.5, 12.25, 30.0), strict=True):
        on_gpu.add_trial(
            create_trial(
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs={**t.user_attrs, "peak_gpu_memory_gb": gib},
            )
        )
    gpu = SweepResults.of(on_gpu)
    table = front_table(gpu).splitlines()
    assert table[1].split()[:4] == ["trial", "cer", "iou", "gpu_mem_gb"]
    rows = {line.split()[0]: line.split()[3] for line in table[2:4]}
    assert rows == {"#1*": "12.2", "#2": "30"}
    assert "gpu_mem_gb: the trial's peak GPU memory, GiB" in table[-1]
    html_table = _front_table(gpu, None)
    assert "<th>peak GPU memory, GiB</th>" in html_table and "<td>12.2</td>" in html_table


def test_the_status_front_shows_train_workers_only_where_a_trial_had_several():
    from vlsweep.status import front_table

    study = _study([(0.5, 0.5), (0.2, 0.6), (0.6, 0.9)])
    assert "workers" not in front_table(SweepResults.of(study))
    spread = optuna.create_study(directions=["minimize", "maximize"], study_name="w")
    spread.set_metric_names(["cer", "iou"])
    for t in study.get_trials():
        attrs = {**t.user_attrs, "world_size": 2}
        spread.add_trial(
            create_trial(values=t.values, params=t.params, distributions=t.distributions, user_attrs=attrs)
        )
    table = front_table(SweepResults.of(spread)).splitlines()
    assert table[1].split()[:4] == ["trial", "cer", "iou", "workers"]
    assert {line.split()[3] for line in table[2:4]} == {"2"}
    assert "workers: the trial's train workers" in table[-1]


def test_status_says_which_trials_ran_again_after_a_worker_death_or_a_node_loss():
    from vlsweep.status import reruns_line

    study = _study([(0.5, 0.5), (0.2, 0.6), (0.6, 0.9)])
    assert reruns_line(study.get_trials()) == ""
    again = optuna.create_study(directions=["minimize", "maximize"], study_name="r")
    again.set_metric_names(["cer", "iou"])
    attrs = [{}, {"worker_restarts": 1}, {"node_losses": 2, "worker_restarts": 1, "resumed_from_step": 40}]
    for t, extra in zip(study.get_trials(), attrs, strict=True):
        again.add_trial(
            create_trial(
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs={**t.user_attrs, **extra},
            )
        )
    assert reruns_line(again.get_trials()) == (
        "run again after a failure (2 trials): #1 worker death x1; "
        "#2 worker death x1, node loss x2 (resumed from step 40)"
    )
