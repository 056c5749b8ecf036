"""Carrying a study of a small model of a family to a larger one (search/transfer.py): the
checks that the two studies go together, the carried front (knee first, clipped to the
target's space, rescaled), and the prior knowledge the sampler sees without the target
study holding it. The sweep on real Ray is in test_sweep.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from vlsweep.errors import UserInputError
from vlsweep.search import transfer
from vlsweep.search.sampling import make_sampler

SMALL, WIDE = "builtin:tiny-qwen2-vl", "builtin:tiny-qwen2-vl-wide"
DISTS = {
    "lr_llm": FloatDistribution(1e-4, 1e-2, log=True),
    "lr_vision": FloatDistribution(1e-5, 1e-3, log=True),
    "lora_r": CategoricalDistribution([4, 8]),
}


def _source(points: list[tuple[dict, list[float]]], model: str = SMALL) -> transfer.Source:
    study = optuna.create_study(directions=["minimize", "maximize"], study_name="src")
    study.set_metric_names(["cer", "iou"])
    study.set_user_attr("config", {"model": {"name_or_path": model}})
    wide = {
        "lr_llm": FloatDistribution(1e-5, 1e-1, log=True),
        "lr_vision": FloatDistribution(1e-6, 1e-2, log=True),
        "lora_r": CategoricalDistribution([4, 8, 16]),
        "lr_projector": FloatDistribution(1e-6, 1e-1, log=True),
    }
    for params, values in points:
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions={k: wide[k] for k in params}, values=values
            )
        )
    return transfer.Source.of(study)


POINTS = [
    ({"lr_llm": 1e-3, "lr_vision": 1e-4, "lora_r": 8}, [0.10, 0.50]),  # front
    ({"lr_llm": 5e-2, "lr_vision": 1e-4, "lora_r": 16}, [0.30, 0.80]),  # front, outside the target
    ({"lr_llm": 2e-3, "lr_vision": 2e-4, "lora_r": 4}, [0.15, 0.70]),  # front, the knee
    ({"lr_llm": 1e-4, "lr_vision": 1e-5, "lora_r": 4}, [0.40, 0.20]),  # dominated
]


def test_the_front_is_carried_knee_first_and_clipped_to_the_targets_space():
    carried = transfer.carry(_source(POINTS), DISTS, rescale="none", width_ratio=0.5)
    sources = [attrs[transfer.CARRIED_ATTR]["trial"] for _, attrs in carried.points]
    assert sources == [2, 0, 1]  # the knee, then the front by number; the dominated one not
    assert carried.points[0][1][transfer.CARRIED_ATTR]["knee"] is True
    assert carried.points[0][1][transfer.CARRIED_ATTR]["values"] == {"cer": 0.15, "iou": 0.70}
    params, attrs = carried.points[2]
    assert params == {"lr_llm": 1e-2, "lr_vision": 1e-4}  # clipped; 16 is no target choice
    assert attrs[transfer.CARRIED_ATTR]["clipped"] == [
        "lr_llm 0.05 clipped to 0.01 (the target's 0.0001..0.01)",
        "lora_r=16 is not among the target's choices [4, 8]: sampled instead",
    ]
    # Every completed trial is prior knowledge, numbered below the target's own trials.
    assert [t.number for t in carried.prior] == [-1, -2, -3, -4]
    assert all(t.state == TrialState.COMPLETE for t in carried.prior)
    assert carried.prior[3].values == [0.40, 0.20]


def test_the_hidden_rule_rescales_the_language_model_and_projector_rates_only():
    dists = {**DISTS, "lr_projector": FloatDistribution(1e-6, 1e-1, log=True)}
    point = {"lr_llm": 2e-3, "lr_vision": 2e-4, "lora_r": 4, "lr_projector": 4e-3}
    src = _source([(point, [0.1, 0.5])])
    params, _ = transfer.carry(src, dists, rescale="hidden", width_ratio=96 / 216).points[0]
    assert params["lr_llm"] == pytest.approx(2e-3 * 96 / 216)
    assert params["lr_projector"] == pytest.approx(4e-3 * 96 / 216)
    assert params["lr_vision"] == 2e-4 and params["lora_r"] == 4


def test_studies_of_one_family_and_vision_tower_go_together_and_others_are_refused():
    objectives = [("cer", "minimize"), ("iou", "maximize")]
    src, tgt = transfer.check_compatible(_source(POINTS), objectives, {"name_or_path": WIDE})
    assert (transfer.hidden_size(src), transfer.hidden_size(tgt)) == (96, 216)

    with pytest.raises(UserInputError) as err:
        transfer.check_compatible(
            _source(POINTS), [("cer", "minimize"), ("acc_iou50", "maximize")], {"name_or_path": WIDE}
        )
    assert err.value.problems == [
        "search.transfer_from: the studies' objectives differ: 'src' has cer (minimize), iou (maximize), "
        "this sweep cer (minimize), acc_iou50 (maximize); carry between sweeps of the same objectives"
    ]
    with pytest.raises(UserInputError, match="the model families differ: 'src' swept a qwen2_vl"):
        transfer.check_compatible(_source(POINTS), objectives, {"name_or_path": "builtin:tiny-llava"})


def test_a_different_vision_tower_is_refused_naming_what_differs(tmp_path):
    """Same family, another tower (tests/tiny_models' random Qwen2-VL is narrower)."""
    from vlsweep.demo.tiny import build_qwen2_vl

    model, processor = build_qwen2_vl(hidden=32, layers=1, vision_layers=1, heads=2)
    model.save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    with pytest.raises(UserInputError) as err:
        transfer.check_compatible(
            _source(POINTS),
            [("cer", "minimize"), ("iou", "maximize")],
            {"name_or_path": str(tmp_path / "other")},
        )
    (problem,) = err.value.problems
    assert problem.startswith("search.transfer_from: the vision configurations differ in depth (2 against 1)")
    assert "embed_dim (96 against 32)" in problem and "hidden_size" not in problem


def test_the_sampler_sees_the_prior_and_the_study_does_not_hold_it():
    seen: list[list[int]] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, dist):
            seen.append([t.number for t in study.get_trials(deepcopy=False)])
            return super().sample_independent(study, trial, name, dist)

    prior = transfer.carry(_source(POINTS), DISTS, rescale="none", width_ratio=1.0).prior
    sampler = make_sampler("random", seed=0, prior=prior)
    sampler.inner = Spy(seed=0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    for _ in range(2):
        trial = study.ask(DISTS)
        study.tell(trial, [0.2, 0.5])
    assert seen[0] == [-1, -2, -3, -4, 0] and seen[-1] == [-1, -2, -3, -4, 0, 1]
    assert [t.number for t in study.get_trials()] == [0, 1]


def test_tpe_proposes_from_the_prior_at_once():
    """With the source's trials as prior knowledge, TPE's first proposal is no longer a
    random startup draw: it comes from its model of them (n_startup_trials counts them)."""
    many = [
        (
            {"lr_llm": 10 ** (-4 + i / 5), "lr_vision": 1e-4, "lora_r": 8},
            [abs(i - 7) / 10, 1 - abs(i - 7) / 10],
        )
        for i in range(11)
    ]
    prior = transfer.carry(_source(many), DISTS, rescale="none", width_ratio=1.0).prior
    firsts = []
    for p in (prior, ()):
        study = optuna.create_study(
            directions=["minimize", "maximize"], sampler=make_sampler("tpe", 0, prior=p)
        )
        firsts.append(study.ask(DISTS).params["lr_llm"])
    assert firsts[0] != firsts[1]


def test_launch_from_sets_search_transfer_from_as_the_file_would(tmp_path):
    """`vlsweep launch TARGET.yaml --from STUDY [--from-storage URL] [--rescale RULE]`."""
    from pathlib import Path

    from vlsweep.cli import _with_transfer
    from vlsweep.search.config import load_sweep_config

    path = Path(__file__).parents[2] / "examples" / "demo-sweep.yaml"
    cfg, _ = load_sweep_config(path)
    got = _with_transfer(cfg, path, "demo", "sqlite:///x.db", "hidden").search.transfer_from
    assert (got.study, got.storage, got.rescale) == ("demo", "sqlite:///x.db", "hidden")
    assert _with_transfer(cfg, path, "demo", None, None).search.transfer_from.rescale == "none"
    with pytest.raises(UserInputError, match="name the study to carry with --from STUDY"):
        _with_transfer(cfg, path, None, None, "hidden")
    with pytest.raises(UserInputError) as err:
        _with_transfer(cfg, path, "demo", None, "tinker")
    assert "search.transfer_from.rescale" in err.value.problems[0]


def test_a_source_storage_with_a_password_is_refused_it_would_be_recorded():
    from pathlib import Path

    from vlsweep.cli import _with_transfer
    from vlsweep.search.config import load_sweep_config

    path = Path(__file__).parents[2] / "examples" / "demo-sweep.yaml"
    cfg, _ = load_sweep_config(path)
    with pytest.raises(UserInputError) as err:
        _with_transfer(cfg, path, "demo", "postgresql://me:secret@127.0.0.1/db", None)
    assert "search.transfer_from.storage" in err.value.problems[0]
    assert "must not hold a password" in err.value.problems[0]
    assert "secret" not in " ".join(err.value.problems)
