"""The tables extensions land in: the parameter contract, the metrics, the Pareto module,
the loss strategies, and the report drawing any number of objectives."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import optuna
import pytest
from optuna.trial import create_trial

from vlsweep import pareto
from vlsweep.config import TrainConfig
from vlsweep.metrics import METRICS, OBJECTIVES, Evaluation, compute
from vlsweep.params import BASELINE, DEFAULT_SPACE, GROUP_LR, PARAM_NAMES, TrialParams, check_value
from vlsweep.search.config import Objective, SweepConfig

DATA = {"train": "t.jsonl", "val": "v.jsonl"}


def test_one_definition_feeds_the_train_config_the_space_and_the_baseline():
    assert set(BASELINE) == set(DEFAULT_SPACE) == set(PARAM_NAMES) == set(TrialParams.model_fields)
    cfg = TrainConfig.model_validate({"data": DATA, "params": {"lr_llm": 3e-4}})
    assert cfg.params == TrialParams(lr_llm=3e-4)
    assert {g: cfg.params.lr_for(g) for g in GROUP_LR} == {"vision": 2e-4, "projector": 1e-3, "llm": 3e-4}
    assert TrialParams.of({"lora_r": 4, "not_a_param": 1}) == TrialParams(lora_r=4)
    assert TrialParams(warmup_ratio=0.1).warmup_steps(25) == 2  # the engine's and every export's count
    assert check_value("lora_dropout", 1.0) == "lora_dropout must be in [0, 1), got 1.0"
    assert check_value("lr_llm", -1.0) == "lr_llm must be a finite number >= 0, got -1.0"
    assert check_value("lora_r", 2.5) == "lora_r must be an integer, got 2.5"
    assert check_value("mix_temperature", 2.0) is None


def test_a_train_config_refuses_an_unknown_parameter():
    with pytest.raises(ValueError, match="params.lr_vit"):
        TrainConfig.model_validate({"data": DATA, "params": {"lr_vit": 1e-4}})


def test_every_metric_of_the_table_can_be_computed_or_is_timed():
    ev = Evaluation(
        ocr=[("12345", "12345"), ("1234", "12345")],
        grounding=[((0, 0, 10, 10), (0, 0, 10, 10)), (None, (0, 0, 5, 5))],
        val_loss={"ocr": 0.5, "grounding": 0.7},
        forgetting=0.25,
    )
    got = compute(ev)
    assert got["cer"] == pytest.approx(0.1) and got["iou"] == pytest.approx(0.5)
    assert got["acc_iou50"] == 0.5 and got["parse_fail_rate"] == 0.5
    assert got["val_loss_ocr"] == 0.5 and got["val_loss_grounding"] == 0.7
    assert got["forgetting"] == 0.25
    timed = {n for n, m in METRICS.items() if m.compute is None}
    assert set(got) | timed == set(METRICS)
    assert timed == {
        "train_seconds",
        "eval_seconds",
        "cpu_seconds",
        "samples_per_second",
        "peak_gpu_memory_gb",
    }
    # Without grounding samples, no grounding metric; without a retention set, no forgetting.
    assert set(compute(Evaluation(ocr=[("1", "1")], val_loss={"ocr": 0.1}))) == {"cer", "val_loss_ocr"}


def test_a_third_objective_takes_its_direction_from_the_table():
    cfg = SweepConfig.model_validate({"data": DATA, "objectives": ["cer", "iou", "parse_fail_rate"]})
    assert [o.direction for o in cfg.objectives] == ["minimize", "maximize", "minimize"]
    assert set(OBJECTIVES) == {n for n, m in METRICS.items() if m.objective}
    with pytest.raises(ValueError, match="unknown metric 'iou_se'"):
        Objective(name="iou_se")  # recorded, never optimized


def _brute_front(points, directions):
    return [
        i
        for i, p in enumerate(points)
        if not any(pareto.dominates(q, p, directions) for j, q in enumerate(points) if j != i)
    ]


def test_the_front_matches_brute_force_in_two_and_three_objectives_ties_included():
    rng = random.Random(0)
    for dirs in (["minimize", "maximize"], ["minimize", "maximize", "minimize"]):
        points = [[rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in dirs] for _ in range(40)]
        assert pareto.front(points, dirs) == _brute_front(points, dirs)
    assert pareto.front([[1, 2], [1, 2], [2, 3]], ["minimize", "minimize"]) == [0, 1]


def test_hypervolume_in_three_objectives_is_the_union_of_boxes():
    dirs = ["minimize", "maximize", "minimize"]
    # Two boxes against ref (1, 0, 1): 0.5*0.5*0.5 and 0.25*0.75*0.25, overlapping 0.25*0.5*0.25.
    hv = pareto.hypervolume([[0.5, 0.5, 0.5], [0.75, 0.75, 0.75]], [1.0, 0.0, 1.0], dirs)
    assert hv == pytest.approx(0.125 + 0.046875 - 0.03125)


def test_the_balance_table_and_the_parameter_name_the_same_strategies():
    from vlsweep.params import LOSS_BALANCES, choices
    from vlsweep.trials import BALANCES

    assert tuple(BALANCES) == LOSS_BALANCES == choices("loss_balance")
    # The old config key points to the parameter that replaced it; the value every study and
    # export before it recorded, weighted_sum, still loads (as the static balance).
    with pytest.raises(ValueError, match="loss.strategy is now the parameter loss_balance"):
        TrainConfig.model_validate({"data": DATA, "loss": {"strategy": "pcgrad"}})
    old = TrainConfig.model_validate({"data": DATA, "loss": {"strategy": "weighted_sum"}})
    assert old.params.loss_balance == "static" and old.loss == TrainConfig.model_validate({"data": DATA}).loss


def test_each_strategy_key_turns_on_parameters_that_are_off_by_default():
    from vlsweep.params import STRATEGIES, strategy_space
    from vlsweep.search.config import StrategiesConfig

    assert tuple(StrategiesConfig.model_fields) == STRATEGIES
    for key in STRATEGIES:
        entries = strategy_space(key)
        assert entries, key
        for name, entry in entries.items():
            # Off by default: the default space holds the parameter at its engine default,
            # a value that leaves the trial as it was before the strategy existed.
            assert DEFAULT_SPACE[name] == TrialParams.model_fields[name].default, name
            assert isinstance(entry, dict) and entry["type"] in ("float", "categorical"), name


def _study(names, directions, n=12, param="lr_llm"):
    study = optuna.create_study(directions=directions, study_name="s")
    study.set_metric_names(names)
    rng = random.Random(1)
    dist = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    for i in range(n):
        study.add_trial(
            create_trial(
                values=[rng.random() for _ in names],
                params={param: 10 ** -(2 + i / 5)},
                distributions={param: dist},
                user_attrs={"baseline": True} if i == 0 else {},
            )
        )
    return study


@pytest.mark.parametrize(
    "names, kind, subplots",
    [
        (["cer", "iou"], "scatter", 0),
        (["cer", "iou", "parse_fail_rate"], "scatter3d", 0),
        (["cer", "iou", "parse_fail_rate", "val_loss_ocr"], "scatter", 6),
    ],
)
def test_the_report_draws_every_objective(names, kind, subplots):
    from vlsweep.report import figures
    from vlsweep.results import SweepResults

    directions = [METRICS[n].direction for n in names]
    res = SweepResults.of(_study(names, directions))
    figs = figures(res, picked_number=3)
    fig = figs["pareto"]
    assert {t.type for t in fig.data} == {kind}
    drawn = sum(len(t.x) for t in fig.data if (t.name or "").startswith(("Pareto front", "dominated")))
    pairs = max(1, subplots)
    assert drawn == len(res.complete) * pairs
    if subplots:
        titles = [a.text for a in fig.layout.annotations]
        pairs_drawn = itertools.combinations(range(len(names)), 2)
        assert titles == [f"{names[j]} vs {names[i]}" for i, j in pairs_drawn]
    if kind == "scatter3d":
        assert fig.layout.scene.zaxis.title.text.startswith("parse_fail_rate")
    # The baseline (trial 0) and the picked trial are marked in every view (each pair).
    for mark, number in (("picked trial", 3), ("baseline (un-tuned defaults)", 0)):
        traces = [t for t in fig.data if t.name == mark]
        assert len(traces) == pairs, mark
        axes = list(itertools.combinations(range(len(names)), 2)) if subplots else [(0, 1)]
        values = res.trial(number).values
        assert [(t.x[0], t.y[0]) for t in traces] == [(values[i], values[j]) for i, j in axes], mark
    # Three objectives: the 3-D scene, and beside it the three pairwise projections.
    assert ("pareto-pairs" in figs) == (len(names) == 3)
    if len(names) == 3:
        flat = figs["pareto-pairs"]
        assert [a.text for a in flat.layout.annotations] == [
            "iou vs cer",
            "parse_fail_rate vs cer",
            "parse_fail_rate vs iou",
        ]
        drawn = sum(len(t.x) for t in flat.data if (t.name or "").startswith(("Pareto front", "dominated")))
        assert drawn == len(res.complete) * 3
        for mark, number in (("picked trial", 3), ("baseline (un-tuned defaults)", 0)):
            v = res.trial(number).values
            shown = [(t.x[0], t.y[0]) for t in flat.data if t.name == mark]
            assert shown == [(v[0], v[1]), (v[0], v[2]), (v[1], v[2])], mark
    # Every objective gets its row of learning-rate plots.
    assert len(figs["learning-rates"].data) == len(names)


def test_every_objective_at_once_draws_and_a_picked_baseline_keeps_both_marks():
    """Seven objectives (each pair its own plot) and long parameter names fit plotly's
    limits; picking the baseline draws the star and the diamond in every view."""
    from vlsweep.report import figures
    from vlsweep.results import SweepResults

    names = [n for n in METRICS if METRICS[n].objective][:7]
    assert len(names) == 7
    # The longest name a strategies sweep searches: its bars' labels widen the columns.
    study = _study(names, [METRICS[n].direction for n in names], param="lora_targets_vision")
    figs = figures(SweepResults.of(study), picked_number=0)
    assert list(figs) == ["pareto", "hypervolume", "importance", "learning-rates"]
    for mark in ("picked trial", "baseline (un-tuned defaults)"):
        assert len([t for t in figs["pareto"].data if t.name == mark]) == 21, mark
    three = figures(SweepResults.of(_study(names[:3], [METRICS[n].direction for n in names[:3]])), 0)
    assert list(three) == ["pareto", "pareto-pairs", "hypervolume", "importance", "learning-rates"]
    for fig in (three["pareto"], three["pareto-pairs"]):
        assert {t.name for t in fig.data} >= {"picked trial", "baseline (un-tuned defaults)"}


def test_importing_the_trials_front_door_loads_no_torch_and_every_name_resolves():
    code = (
        "import sys, vlsweep.trials as t; assert 'torch' not in sys.modules, 'torch loaded';"
        "[getattr(t, n) for n in t.__all__]; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
