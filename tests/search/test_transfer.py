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
        "lr_llm 0.05 moved to 0.01 (the target's 0.0001..0.01)",
        "lora_r=16 is not among the target's choices [4, 8]: sampled instead",
    ]
    # The completed trials that lie in this space are prior knowledge, numbered below the
    # target's own trials; #1, which had to be moved, is not an observation of this space.
    assert [t.number for t in carried.prior] == [-1, -3, -4]
    assert all(t.state == TrialState.COMPLETE for t in carried.prior)
    assert carried.prior[-1].values == [0.40, 0.20]


def test_the_hidden_rule_rescales_the_language_models_rate_only():
    dists = {**DISTS, "lr_projector": FloatDistribution(1e-6, 1e-1, log=True)}
    point = {"lr_llm": 2e-3, "lr_vision": 2e-4, "lora_r": 4, "lr_projector": 4e-3}
    src = _source([(point, [0.1, 0.5])])
    params, _ = transfer.carry(src, dists, rescale="hidden", width_ratio=96 / 216).points[0]
    assert params["lr_llm"] == pytest.approx(2e-3 * 96 / 216)
    # The merger's input is the shared tower's, of fixed width: its rate stays, as the tower's.
    assert params["lr_projector"] == 4e-3 and params["lr_vision"] == 2e-4 and params["lora_r"] == 4


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
    """Same family, another tower (tests/support/tiny_models' random Qwen2-VL is narrower)."""
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
    sampler = make_sampler("tpe", seed=0, prior=prior)
    sampler.inner = Spy(seed=0)  # what the sampler is shown
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    for _ in range(2):
        trial = study.ask(DISTS)
        study.tell(trial, [0.2, 0.5])
    assert seen[0] == [-1, -3, -4, 0] and seen[-1] == [-1, -3, -4, 0, 1]
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


def test_a_value_off_the_targets_step_is_put_on_it():
    from optuna.distributions import IntDistribution

    dists = {
        "lora_r": IntDistribution(8, 24, step=8),
        "lr_llm": FloatDistribution(0.1, 0.5, step=0.1),
    }
    assert transfer._fit("lora_r", 12, dists["lora_r"]) == (
        16,
        "lora_r 12 moved to 16 (the target's 8..24, step 8)",
    )
    assert transfer._fit("lora_r", 64, dists["lora_r"])[0] == 24  # the highest value on the step
    value, note = transfer._fit("lr_llm", 0.26, dists["lr_llm"])
    assert value == pytest.approx(0.3) and note.startswith("lr_llm 0.26 moved to 0.3")
    assert transfer._fit("lora_r", 16, dists["lora_r"]) == (16, None)


@pytest.mark.parametrize("kind", ["tpe", "gp", "nsga2"])
def test_each_sampler_runs_with_a_carried_prior(kind):
    """GP fits every trial it is shown, so a prior must hold every parameter searched here
    (carry keeps only those); NSGA-II reads its generations by list position, so it gets no
    prior and its generations still advance."""
    many = [
        (
            {"lr_llm": 10 ** (-4 + i / 6), "lr_vision": 1e-4, "lora_r": 8},
            [abs(i - 6) / 10, 1 - abs(i - 7) / 10],
        )
        for i in range(12)
    ]
    lacking = [({"lr_llm": 1e-3}, [0.3, 0.3])]  # no lr_vision, no lora_r: not knowledge here
    prior = transfer.carry(_source(many + lacking), DISTS, rescale="none", width_ratio=1.0).prior
    assert len(prior) == 12
    sampler = make_sampler(kind, 0, prior=prior)
    if kind == "nsga2":  # generations of 4, so 12 trials make three
        assert sampler.prior == []
        sampler.inner = optuna.samplers.NSGAIISampler(population_size=4, seed=0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    for _ in range(12):
        trial = study.ask(DISTS)
        study.tell(trial, [trial.params["lr_llm"], trial.params["lr_vision"]])
    assert len(study.get_trials()) == 12 and min(t.number for t in study.get_trials()) == 0
    if kind == "nsga2":
        key = "NSGAIISampler:generation"
        assert max(t.system_attrs.get(key, 0) for t in study.get_trials()) >= 1


def test_a_constraint_set_through_optuna_makes_a_trial_infeasible():
    """Optuna 5 writes one ``constraints:<name>`` attr per constraint: the front and the
    carried prior must see it (outcomes.feasible)."""
    from vlsweep import outcomes

    study = optuna.create_study(directions=["minimize", "maximize"])
    trial = study.ask()
    trial.set_constraint("cer <= 0.1", 0.5)
    study.tell(trial, [0.2, 0.5])
    (frozen,) = study.get_trials()
    assert not outcomes.feasible(frozen)
    assert outcomes.pareto_front(study) == []


def test_a_carried_point_lost_with_its_driver_is_queued_again_as_carried():
    from vlsweep.search.sweep import requeue_lost

    study = optuna.create_study(directions=["minimize", "maximize"])
    study.enqueue_trial({"lr_llm": 1e-3}, user_attrs={transfer.CARRIED_ATTR: {"study": "src", "trial": 2}})
    study.ask({"lr_llm": DISTS["lr_llm"]})  # running when the driver was killed
    assert requeue_lost(study, log=lambda _m: None) == 1
    lost, again = study.get_trials()
    assert again.state == TrialState.WAITING
    assert again.user_attrs[transfer.CARRIED_ATTR] == {"study": "src", "trial": 2}
    assert again.user_attrs["retry_of"] == lost.number
