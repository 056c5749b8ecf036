"""The strategies' math on tiny hand-made cases: the weights and gradients each balance
produces, the data schedules' draws, the LoRA layout, and a trial with each of them."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.support.helpers import train_config
from vlsweep.config import LossConfig, TrainConfig
from vlsweep.params import LOSS_BALANCES, TrialParams
from vlsweep.trials import BALANCES, StrategyMixer, difficulty, layer_kind, load_base, load_data, run_trial
from vlsweep.trials.data import Record, competence, rotation_probabilities
from vlsweep.trials.engine import Trainer

W = torch.tensor([0.25, 0.75])
PRESENT = torch.tensor([3.0, 5.0])  # token counts: both tasks in the batch


def _losses(x: torch.Tensor) -> torch.Tensor:
    # Two tasks on one 2-d parameter: L1 = (x0 - 1)^2 + x1, L2 = (x0 + 1)^2 - x1, so their
    # gradients at x = 0 are (-2, 1) and (2, -1): in exact conflict.
    return torch.stack([(x[0] - 1) ** 2 + x[1], (x[0] + 1) ** 2 - x[1]])


def _grad(name: str, x0: list[float], counts: torch.Tensor = PRESENT):
    x = torch.nn.Parameter(torch.tensor(x0))
    balance = BALANCES[name](2, W, LossConfig())
    loss = balance.backward(_losses(x), counts, [x])
    return x.grad, balance, loss


def test_static_is_the_weighted_sum():
    grad, balance, loss = _grad("static", [0.0, 0.0])
    # 0.25 * (-2, 1) + 0.75 * (2, -1)
    assert grad.tolist() == pytest.approx([1.0, -0.5])
    assert loss.item() == pytest.approx(1.0)
    assert balance.last_weights.tolist() == [0.25, 0.75]


def test_uncertainty_weights_each_task_by_its_learned_variance():
    x = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    balance = BALANCES["uncertainty"](2, W, LossConfig())
    (name, log_var), *rest = balance.trainable()
    assert name == "balance.log_var" and not rest
    with torch.no_grad():
        log_var.copy_(torch.tensor([0.0, math.log(4.0)]))
    means = torch.stack([(x[0] - 1) ** 2 + 2.0, (x[0] + 1) ** 2 + 2.0])  # both 3 at x = 0
    loss = balance.backward(means, PRESENT, [x])
    # 0.5 e^-s L + 0.5 s: weights 0.5 and 0.125 on the task gradients (-2, 0) and (2, 0).
    assert balance.last_weights.tolist() == pytest.approx([0.5, 0.125])
    assert x.grad.tolist() == pytest.approx([0.5 * -2 + 0.125 * 2, 0.0])
    assert loss.item() == pytest.approx(0.5 * 3 + 0.125 * 3 + 0.5 * math.log(4.0))
    # d/ds (0.5 e^-s L + 0.5 s) = 0.5 - 0.5 e^-s L: a task whose loss is large gets its
    # variance raised (its weight lowered).
    assert log_var.grad.tolist() == pytest.approx([0.5 - 0.5 * 3, 0.5 - 0.125 * 3])


def test_uncertainty_leaves_a_task_absent_from_the_batch_alone():
    x = torch.nn.Parameter(torch.tensor([-1.0, 0.0]))  # L1 = 4
    balance = BALANCES["uncertainty"](2, W, LossConfig())
    (_, log_var), *_ = balance.trainable()
    balance.backward(_losses(x) * torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0]), [x])
    assert log_var.grad.tolist() == pytest.approx([0.5 - 0.5 * 4, 0.0])


def test_famo_steps_its_weights_toward_the_task_that_fell_least():
    x = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    balance = BALANCES["famo"](2, W, LossConfig(famo_lr=0.1))
    assert balance.needs_losses_after_step and balance.trainable() == []
    (logits,) = balance.owned()
    means = torch.stack([(x[0] - 1) ** 2 + 1.0, (x[0] + 1) ** 2 + 1.0])  # both 2 at x = 0
    balance.backward(means, PRESENT, [x])
    # Equal weights at the start: c * sum z_i log L_i with c = 1 / sum(z_i / L_i) = 2, so
    # the gradient is sum z_i c / L_i dL_i = 0.5 * (-2) + 0.5 * 2 = 0 in x0.
    assert balance.last_weights.tolist() == pytest.approx([0.5, 0.5])
    assert x.grad.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    # After the step, task 0 fell from 2 to 1 and task 1 stayed at 2: FAMO moves weight to
    # task 1 (the logits' Adam step is lr in the direction of the loss decrease's share).
    balance.after_step(torch.tensor([1.0, 2.0]), PRESENT)
    assert logits[1].item() > logits[0].item()
    assert logits[1].item() - logits[0].item() == pytest.approx(2 * 0.1, rel=1e-3)
    balance.backward(means.detach().requires_grad_(), PRESENT, [x])
    assert balance.last_weights[1] > balance.last_weights[0]


def test_famo_stands_in_the_last_seen_loss_for_an_absent_task():
    x = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    balance = BALANCES["famo"](2, W, LossConfig())
    both = torch.stack([(x[0] - 1) ** 2 + 1.0, (x[0] + 1) ** 2 + 1.0])
    balance.backward(both, PRESENT, [x])
    x.grad = None
    only_first = torch.stack([(x[0] - 1) ** 2 + 1.0, torch.zeros(())])
    balance.backward(only_first, torch.tensor([4.0, 0.0]), [x])
    # The absent task's mean of 0 would make FAMO's normaliser ~eps and the update ~0; with
    # the last seen loss (2) in its place, task 0's gradient gets its share: c z_0 / L_0.
    assert x.grad[0].item() == pytest.approx(0.5 * 2 / 2 * -2.0, rel=1e-4)
    before = balance.famo._w.detach().clone()
    balance.after_step(torch.tensor([1.5, 0.0]), torch.tensor([4.0, 0.0]))
    # No weight update from a batch without every task (softmax couples the logits: the
    # absent task's weight would rise as if it had stalled).
    assert torch.equal(before, balance.famo._w.detach())
    balance.backward(both.detach().requires_grad_(), PRESENT, [x])
    balance.after_step(torch.tensor([1.0, 2.0]), PRESENT)
    assert not torch.equal(before, balance.famo._w.detach())


def test_famo_stands_in_the_present_loss_for_a_task_not_seen_yet():
    x = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    balance = BALANCES["famo"](2, W, LossConfig())
    only_second = torch.stack([torch.zeros(()), (x[0] + 1) ** 2 + 1.0])  # L2 = 2
    balance.backward(only_second, torch.tensor([0.0, 4.0]), [x])
    # Task 0 stands in at task 1's loss (2): c = 1 / (0.5/2 + 0.5/2) = 2; grad = c z_1 / L_1 * 2.
    assert x.grad[0].item() == pytest.approx(2 * 0.5 / 2 * 2.0, rel=1e-4)


def test_pcgrad_projects_out_the_conflicting_component():
    # At x = (0, 0.5)... the gradients are g1 = (-2, 1), g2 = (2, -1): exactly opposite, so
    # each projected on the other's normal plane is 0 and PCGrad's sum is 0.
    grad, balance, _ = _grad("pcgrad", [0.0, 0.0])
    assert grad.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    # Non-conflicting gradients pass unchanged: at x0 = -2, g1 = (-6, 1), g2 = (-2, -1)
    # have a positive dot product (11), so PCGrad returns their sum.
    grad, balance, _ = _grad("pcgrad", [-2.0, 0.0])
    assert grad.tolist() == pytest.approx([-8.0, 0.0])
    assert balance.last_weights.tolist() == pytest.approx([1.0, 1.0])


def test_upgrad_gives_a_direction_no_task_loses_by():
    # g1 = (-2, 1), g2 = (1, 1) at x0 = -0.5 for L2 = (x0 + 1)^2 + x1: they conflict
    # (dot -1); UPGrad projects each onto the dual cone and averages. The result must not
    # increase either loss to first order: g . g_i >= 0.
    x = torch.nn.Parameter(torch.tensor([-0.5, 0.0]))
    balance = BALANCES["upgrad"](2, W, LossConfig())
    means = torch.stack([(x[0] - 1) ** 2 + x[1], (x[0] + 1) ** 2 + x[1]])
    balance.backward(means, PRESENT, [x])
    g = x.grad
    g1, g2 = torch.tensor([-3.0, 1.0]), torch.tensor([1.0, 1.0])
    assert float(g @ g1) >= -1e-6 and float(g @ g2) >= -1e-6
    assert g.norm() > 0
    assert (balance.last_weights > 0).all()


@pytest.mark.parametrize("name", ["pcgrad", "upgrad"])
def test_jacobian_methods_with_one_task_in_the_batch_use_its_own_gradient(name):
    grad, balance, _ = _grad(name, [0.0, 0.0], counts=torch.tensor([0.0, 4.0]))
    assert grad.tolist() == pytest.approx([2.0, -1.0])
    assert balance.last_weights.tolist() == [0.0, 1.0]


# -- data schedules ----------------------------------------------------------------------


def _records() -> list[Record]:
    out = [Record(image=Path("x.png"), task="ocr", size=(100, 100), text="a" * n) for n in (1, 5, 3, 9)]
    for side in (10, 50, 80, 30):  # box sides: small is hard
        out.append(
            Record(image=Path("x.png"), task="grounding", size=(100, 100), query="q", box=(0, 0, side, side))
        )
    return out


def test_difficulty_ranks_text_length_and_small_boxes_within_each_task():
    d = difficulty(_records())
    assert d[:4] == [0.0, 2 / 3, 1 / 3, 1.0]  # ocr: 1 < 3 < 5 < 9 characters
    assert d[4:] == [1.0, 1 / 3, 0.0, 2 / 3]  # grounding: side 10 is the hardest


def test_tied_samples_share_their_mean_rank_and_equal_boxes_leave_the_strategies_no_order():
    def box(side: int) -> Record:
        return Record(Path("x.png"), "grounding", (100, 100), query="q", box=(0, 0, side, side))

    # Sides 10, 30, 30, 50: the two 30s take ranks 1 and 2 together.
    assert difficulty([box(10), box(30), box(30), box(50)]) == [1.0, 0.5, 0.5, 0.0]
    # Table cells: every box one size, so no sample is harder than another.
    cells = [box(40) for _ in range(6)]
    assert difficulty(cells) == [0.5] * 6
    mixer = StrategyMixer(cells, 1.0, 0, steps=100, hard_oversample=4.0, curriculum_ratio=0.5)
    draws = Counter(mixer.batch(6000, step=1))  # the curriculum's first step admits them all
    assert set(draws) == set(range(6)) and max(draws.values()) / min(draws.values()) < 1.15


def test_competence_grows_by_the_square_root_schedule_and_reaches_all():
    assert competence(0, 100) == pytest.approx(0.25)
    assert competence(50, 100) == pytest.approx(math.sqrt(0.5 * (1 - 0.0625) + 0.0625))
    assert competence(100, 100) == competence(7, 0) == 1.0


def test_rotation_gives_the_dominant_task_its_share_in_turn():
    base = {"grounding": 0.4, "ocr": 0.6}
    assert rotation_probabilities(base, 1, 10, 0.9) == pytest.approx({"grounding": 0.9, "ocr": 0.1})
    assert rotation_probabilities(base, 11, 10, 0.9) == pytest.approx({"grounding": 0.1, "ocr": 0.9})
    assert rotation_probabilities(base, 21, 10, 0.9)["grounding"] == pytest.approx(0.9)
    assert rotation_probabilities(base, 5, 0, 0.9) == base


def test_oversampling_draws_hard_grounding_samples_that_many_times_as_often():
    mixer = StrategyMixer(_records(), 1.0, 0, steps=100, hard_oversample=3.0)
    draws = mixer.batch(20000, step=1)
    hard = sum(1 for i in draws if i in (4, 7))  # difficulty 1 and 2/3
    easy = sum(1 for i in draws if i in (5, 6))
    assert hard / easy == pytest.approx(3.0, rel=0.08)
    # OCR is not oversampled.
    ocr = [sum(1 for i in draws if i == k) for k in range(4)]
    assert max(ocr) / min(ocr) == pytest.approx(1.0, abs=0.15)


def test_the_curriculum_admits_the_easy_samples_first_and_all_at_the_end():
    mixer = StrategyMixer(_records(), 1.0, 0, steps=100, curriculum_ratio=0.5)
    early = set(mixer.batch(2000, step=1))
    assert early == {0, 6}  # the shortest text and the largest box (c = 0.25)
    assert set(mixer.batch(2000, step=50)) == set(range(8))


def test_a_rotation_phase_fills_the_batch_with_its_dominant_task():
    mixer = StrategyMixer(_records(), 1.0, 0, steps=100, rotation_period=10, rotation_share=0.9)
    first = mixer.batch(4000, step=1)
    second = mixer.batch(4000, step=11)
    assert sum(i >= 4 for i in first) / 4000 == pytest.approx(0.9, abs=0.02)  # grounding
    assert sum(i < 4 for i in second) / 4000 == pytest.approx(0.9, abs=0.02)  # ocr


def test_layer_kinds_across_the_families_paths():
    assert layer_kind("model.language_model.layers.0.self_attn.q_proj") == "attention"
    assert layer_kind("model.language_model.layers.0.mlp.gate_proj") == "mlp"
    assert layer_kind("model.visual.blocks.1.attn.qkv") == "attention"
    assert layer_kind("model.visual.blocks.1.mlp.fc1") == "mlp"
    assert layer_kind("model.multi_modal_projector.linear_1") is None


# -- in a trial ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, demo_data):
    cfg = TrainConfig.model_validate(
        train_config(tiny_checkpoint("qwen2_vl"), demo_data, lora={"vision": True}, budget={"steps": 4})
    )
    return cfg, load_data(cfg.data, Path(".")), load_base(cfg.model)


def test_a_learnable_balance_has_an_optimizer_group_of_its_own(setup):
    cfg, data, base = setup
    trainer = Trainer(TrialParams(loss_balance="uncertainty"), cfg.budget, cfg=cfg, data=data, base=base)
    trainer.attach()
    try:
        groups = {g["name"]: g for g in trainer.optimizer.param_groups}
        assert groups["balance.no_decay"]["param_names"] == ["balance.log_var"]
        assert groups["balance.no_decay"]["lr"] == cfg.loss.balance_lr
        trainable = [p for p in trainer.model.parameters() if p.requires_grad] + [trainer.balance.uw.log_var]
        grouped = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        assert len(grouped) == len(trainable) == len({id(p) for p in grouped})
        before = trainer.balance.uw.log_var.detach().clone()
        trainer.model.train()
        trainer.step(trainer.train_batch(list(range(len(data.train))[:8])))
        assert not torch.equal(before, trainer.balance.uw.log_var.detach())
    finally:
        trainer.detach()


def test_clipping_and_the_total_norm_leave_out_the_balances_own_parameters(setup):
    cfg, data, base = setup
    trainer = Trainer(TrialParams(loss_balance="uncertainty"), cfg.budget, cfg=cfg, data=data, base=base)
    trainer.attach()
    try:
        trainer.model.train()
        out = trainer.step(trainer.train_batch(list(range(8))))
        norms = out["grad_norm"]
        assert "balance" in norms
        model = torch.linalg.vector_norm(torch.stack([v for k, v in norms.items() if k != "balance"]))
        assert float(out["grad_norm_total"]) == pytest.approx(float(model))
        assert trainer.steps_done == 1
    finally:
        trainer.detach()


def test_vision_first_keeps_the_llm_still_until_its_steps_are_done(setup):
    cfg, data, base = setup
    params = TrialParams(vision_first_ratio=0.5, warmup_ratio=0.0, lr_llm=1e-2, lr_vision=1e-2)
    trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base)
    trainer.attach()
    try:
        trainer.model.train()
        named = dict(trainer.model.named_parameters())
        llm = next(n for n in named if ".language_model." in n and "lora_B" in n)
        vis = next(n for n in named if ".visual.blocks." in n and "lora_B" in n)
        snap = {n: named[n].detach().clone() for n in (llm, vis)}
        trainer.step(trainer.train_batch(list(range(8))), step=2)  # 2 <= 0.5 * 4
        assert torch.equal(snap[llm], named[llm]) and not torch.equal(snap[vis], named[vis])
        trainer.step(trainer.train_batch(list(range(8))), step=3)
        assert not torch.equal(snap[llm], named[llm])
    finally:
        trainer.detach()


def test_the_lora_layout_sets_each_groups_rank_and_layers(setup):
    cfg, data, base = setup
    params = TrialParams(lora_r=4, lora_r_vision=16, lora_targets_llm="mlp", lora_targets_vision="attention")
    trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base)
    trainer.attach()
    try:
        assert trainer.plan.rank == {"llm": 4, "vision": 16}
        adapted = [
            n.removesuffix(".lora_A.default.weight")
            for n, _ in trainer.model.named_parameters()
            if n.endswith("lora_A.default.weight")
        ]
        llm = [n for n in adapted if ".language_model." in n]
        vision = [n for n in adapted if ".visual.blocks." in n]
        assert llm and all(layer_kind(n) == "mlp" for n in llm)
        assert vision and all(layer_kind(n) == "attention" for n in vision)
        a = dict(trainer.model.named_parameters())[vision[0] + ".lora_A.default.weight"]
        assert a.shape[0] == 16
    finally:
        trainer.detach()


@pytest.mark.parametrize("balance", LOSS_BALANCES)
def test_a_trial_runs_with_each_balance_and_logs_its_weights(setup, balance, tmp_path):
    cfg, data, base = setup
    rows = []
    params = TrialParams(loss_balance=balance, hard_oversample=2.0, curriculum_ratio=0.5, rotation_period=2)
    result = run_trial(
        params, cfg.budget, cfg=cfg, data=data, base=base, output_dir=tmp_path, on_log_row=rows.append
    )
    assert result["params"]["loss_balance"] == balance
    assert {"weight_ocr", "weight_grounding"} <= set(rows[-1])
    assert math.isfinite(result["cer"]) and (tmp_path / "adapter" / "adapter_config.json").is_file()
