from pathlib import Path

import optuna
import pytest

from vlsweep.errors import UserInputError
from vlsweep.params import BASELINE, DEFAULT_SPACE, TrialParams
from vlsweep.search.config import load_sweep_config
from vlsweep.spaces import parse_space


def test_default_space_parses_and_baseline_is_inside_it():
    space, problems = parse_space(None)
    assert problems == []
    # Optuna runs an enqueued point as given, in range or not (it only warns): containment
    # is checked on the space itself.
    assert space.outside(BASELINE) == []
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.enqueue_trial(BASELINE)
    values = space.suggest(study.ask(), {"lora.vision": True, "lora.projector": "full"})
    assert values == BASELINE
    assert TrialParams.of(values) == TrialParams(**BASELINE)


def test_a_point_off_the_space_is_named():
    space, _ = parse_space(
        {
            "lr_llm": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "lora_r": {"type": "categorical", "choices": [16, 32]},
            "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05},
            "warmup_ratio": 0.2,
        }
    )
    point = {"lr_llm": 1e-4, "lora_r": 8, "lora_dropout": 0.07, "warmup_ratio": 0.1, "weight_ocr": 0.5}
    assert space.outside(point) == ["lr_llm=0.0001", "lora_r=8", "lora_dropout=0.07", "warmup_ratio=0.1"]
    assert space.outside(point, fixed=False) == ["lr_llm=0.0001", "lora_r=8", "lora_dropout=0.07"]
    assert space.outside({"lr_llm": 2e-3, "lora_r": 16, "lora_dropout": 0.05, "warmup_ratio": 0.2}) == []


def test_conditionals_skip_inactive_parameters():
    space, _ = parse_space(DEFAULT_SPACE)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(0))
    off = space.suggest(study.ask(), {"lora.vision": False, "lora.projector": "frozen"})
    assert "lr_vision" not in off and "lr_projector" not in off and "lr_llm" in off
    on = space.suggest(study.ask(), {"lora.vision": True, "lora.projector": "lora"})
    assert "lr_vision" in on and "lr_projector" in on


def test_condition_on_an_earlier_parameter():
    space, problems = parse_space(
        {
            "lora_r": {"type": "categorical", "choices": [4, 64]},
            "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2, "when": {"lora_r": 64}},
        }
    )
    assert problems == []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(1))
    seen = [space.suggest(study.ask(), {}) for _ in range(20)]
    assert all(("lora_dropout" in v) == (v["lora_r"] == 64) for v in seen)


def test_every_space_problem_is_reported_at_once():
    _, problems = parse_space(
        {
            "lr_llm": {"type": "float", "low": 1e-2, "high": 1e-5, "log": True},
            "lr_vision": {"type": "float", "low": 0.0, "high": 1e-3, "log": True},
            "lora_r": {"type": "float", "low": 2, "high": 8},
            "lora_rank": 8,
            "weight_ocr": {"type": "float", "low": 0.1, "high": 1.5},
            "lora_dropout": "a lot",
            "mix_temperature": {"type": "uniform", "low": 1, "high": 2},
            "warmup_ratio": {"type": "float", "low": 0, "high": 0.1, "when": {"lora.visoin": True}},
        }
    )
    text = "\n".join(problems)
    assert "space.lr_llm: low (0.01) must not exceed high (1e-05)" in text
    assert "space.lr_vision: a log-scaled range needs low > 0" in text
    assert "space.lora_r: lora_r is an integer" in text
    assert "space.lora_rank: unknown parameter" in text
    assert "space.weight_ocr: weight_ocr must be in [0, 1]" in text
    assert "space.lora_dropout: lora_dropout takes a number" in text
    assert "space.mix_temperature.type: must be one of float, int, categorical" in text
    assert "space.warmup_ratio.when: unknown key 'lora.visoin'" in text
    assert len(problems) == 8


def test_sweep_config_problems_are_reported_together(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "name: bad name\n"
        "data: {train: a.jsonl, val: a.jsonl}\n"
        "objectives: [iou, cer]\n"
        "constraints: ['cer < 0.2', 'wer <= 1']\n"
        "search: {sampler: cmaes, trials: 0}\n"
        "storage: postgresql://u:secret@db/x\n"
        "space: {lr_llm: {type: float, low: 1, high: 0}}\n"
    )
    with pytest.raises(UserInputError) as info:
        load_sweep_config(cfg)
    text = "\n".join(info.value.problems)
    for field in (
        "name",
        "objectives",
        "constraints",
        "search.sampler",
        "search.trials",
        "storage",
        "space.lr_llm",
    ):
        assert f": {field}" in text, (field, text)
    assert "secret" not in text


def test_a_tied_parameter_follows_its_target_and_is_not_sampled():
    import optuna

    space, problems = parse_space(
        {
            "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "lr_vision": {"same_as": "lr_llm"},
            "lr_projector": {"same_as": "lr_llm"},
            "lora_r": 8,
        }
    )
    assert problems == []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = space.suggest(trial, {})
    assert values["lr_vision"] == values["lr_projector"] == values["lr_llm"]
    assert set(trial.params) == {"lr_llm"}  # one dimension in the study
    assert not space.active("lr_vision", {}, values)
    # What export replays from a trial's params gives the tied values back.
    again = space.suggest(optuna.trial.FixedTrial({"lr_llm": 3e-4}), {})
    assert again["lr_vision"] == again["lr_projector"] == 3e-4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lr_vision": {"same_as": "lr_llm"}}, "space.lr_vision.same_as: 'lr_llm' must be another, untied"),
        ({"lr_llm": 1e-3, "lr_vision": {"same_as": "lr_vision"}}, "must be another, untied parameter"),
        ({"lora_r": 8, "lr_vision": {"same_as": "lora_r"}}, "lr_vision and lora_r take different types"),
        (
            {"lr_llm": 1e-3, "lr_vision": {"same_as": "lr_llm", "low": 1}},
            "a tie is {same_as: PARAMETER} alone",
        ),
        (
            {"lr_llm": 1e-3, "lr_projector": {"same_as": "lr_llm"}, "lr_vision": {"same_as": "lr_projector"}},
            "space.lr_vision.same_as: 'lr_projector' must be another, untied",
        ),
        ({"lr_llm": 1e-3, "lr_vision": {"same_as": ["lr_llm"]}}, "give one parameter name, got ['lr_llm']"),
        (
            {
                "lr_vision": {"type": "float", "low": 1e-5, "high": 1e-3, "when": {"lora.vision": True}},
                "lr_llm": {"same_as": "lr_vision"},
            },
            "space.lr_llm.same_as: lr_vision is conditional (when: ...)",
        ),
        (
            {
                "mix_temperature": {"type": "float", "low": 1, "high": 4},
                "weight_ocr": {"same_as": "mix_temperature"},
            },
            "space.weight_ocr.same_as: weight_ocr must be in [0, 1], got 4.0",
        ),
    ],
)
def test_bad_ties_name_the_parameter(raw, message):
    _, problems = parse_space(raw)
    assert any(message in p for p in problems), problems


def test_a_warm_start_point_that_sets_a_tied_parameter_is_an_error():
    from pathlib import Path

    from vlsweep.search.config import SweepConfig, WarmStart, _warm_start_problems, load_sweep_config

    cfg, _ = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    raw = cfg.model_dump(mode="json", exclude={"storage"})
    raw["space"] = {
        "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "lr_vision": {"same_as": "lr_llm"},
    }
    cfg = SweepConfig.model_validate(raw)
    cfg.search.warm_start = [WarmStart(params={"lr_llm": 1e-3, "lr_vision": 1e-4})]
    assert _warm_start_problems(cfg) == [
        "search.warm_start.0.params: lr_vision follow(s) lr_llm (same_as); give that parameter instead"
    ]


def test_strategies_widen_the_space_and_the_users_own_range_wins(tmp_path):
    import yaml

    from vlsweep.search.config import sanitized_config

    raw = {
        "model": {"name_or_path": "builtin:tiny-qwen2-vl"},
        "data": {"train": "builtin:demo/train", "val": "builtin:demo/val"},
        "lora": {"vision": True, "projector": "full"},
        "strategies": {"loss_balance": True, "rotation": True, "lora_layout": True},
        "space": {
            "lr_llm": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "weight_ocr": {"type": "float", "low": 0.2, "high": 0.8, "when": {"loss_balance": "static"}},
            "rotation_period": {"type": "categorical", "choices": [5, 20]},
        },
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    cfg, base = load_sweep_config(tmp_path / "s.yaml")
    space = cfg.search_space
    assert space.searched["loss_balance"].choices == ["static", "uncertainty", "famo", "pcgrad", "upgrad"]
    assert space.searched["rotation_period"].choices == [5, 20]  # the user's own range
    assert {"rotation_share", "lora_r_vision", "lora_targets_llm", "lora_targets_vision"} <= set(
        space.searched
    )
    assert "curriculum_ratio" not in space.searched and "lora_r_projector" in space.searched
    # The study records the widened space; reloading it widens nothing more.
    again = type(cfg).model_validate(sanitized_config(cfg, base))
    assert again.space == cfg.space
    # Conditionals follow the choice: weight_ocr only under the static balance.
    settings = cfg.settings()
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(1))
    seen = {}
    for _ in range(40):
        values = space.suggest(study.ask(), settings)
        seen.setdefault(values["loss_balance"], set()).add("weight_ocr" in values)
        assert values["rotation_period"] in (5, 20) and 0.6 <= values["rotation_share"] <= 0.95
        assert "lora_r_projector" not in values  # lora.projector is full, not lora
    assert seen.pop("static") == {True}
    assert seen and all(v == {False} for v in seen.values())


def test_no_strategy_leaves_the_default_space_as_it_was():
    from vlsweep.spaces import with_strategies

    assert with_strategies(None, []) is None
    space, _ = parse_space(None)
    assert space.fixed["loss_balance"] == "static" and space.fixed["hard_oversample"] == 1.0
    assert not {"loss_balance", "curriculum_ratio", "lora_targets_llm"} & set(space.searched)


def test_every_strategys_range_holds_its_off_value_so_the_baseline_is_inside():
    from vlsweep.params import STRATEGIES
    from vlsweep.spaces import with_strategies

    space, problems = parse_space(with_strategies(None, list(STRATEGIES)))
    assert problems == []
    assert space.outside(BASELINE) == []
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.enqueue_trial(BASELINE)
    settings = {"lora.vision": True, "lora.projector": "lora"}
    values = space.suggest(study.ask(), settings)
    assert TrialParams.of(values) == TrialParams.of(BASELINE)
    # rotation_share follows a period other than 0 ({not: 0}).
    assert "rotation_share" not in values and values["rotation_period"] == 0
    study.enqueue_trial({**BASELINE, "rotation_period": 25})
    assert "rotation_share" in space.suggest(study.ask(), settings)


def test_float16_with_a_balance_a_loss_scaler_changes_is_refused_before_the_sweep():
    import torch
    import yaml

    from vlsweep.config import LossConfig
    from vlsweep.search.config import NOT_SCALE_EQUIVARIANT
    from vlsweep.trials.losses import BALANCES

    balances = {n: make(2, torch.ones(2), LossConfig()) for n, make in BALANCES.items()}
    flagged = [n for n, b in balances.items() if not b.scale_equivariant]
    assert sorted(flagged) == sorted(NOT_SCALE_EQUIVARIANT)
    path = Path(__file__).parents[1] / "examples" / "strategies-sweep.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {**raw.get("model", {}), "dtype": "float16"}
    with pytest.raises(UserInputError, match="model.dtype: float16 trains with a loss scaler") as err:
        load_sweep_config(path, data=raw)
    assert "uncertainty and famo" in str(err.value)
    raw["space"] = {"loss_balance": {"type": "categorical", "choices": ["static", "upgrad"]}}
    raw.pop("strategies")
    load_sweep_config(path, data=raw)  # the others take a loss scaler
