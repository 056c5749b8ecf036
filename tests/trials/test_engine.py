from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.support.helpers import train_config
from vlsweep.config import TrainConfig
from vlsweep.params import TrialParams
from vlsweep.trials import load_base, load_data, run_trial, task_losses, weighted_sum
from vlsweep.trials.engine import Trainer


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, demo_data):
    cfg = TrainConfig.model_validate(train_config(tiny_checkpoint("qwen2_vl"), demo_data))
    return cfg, load_data(cfg.data, Path("."))


def _trainer(cfg, data, params, **lora) -> Trainer:
    if lora:
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update=lora)})
    trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=load_base(cfg.model))
    trainer.attach()
    trainer.model.train()
    return trainer


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_every_trainable_parameter_is_in_exactly_one_optimizer_group(setup):
    cfg, data = setup
    trainer = _trainer(cfg, data, TrialParams(), vision=True, loraplus_lr_ratio=4.0)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    grouped = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    by_name = {g["name"]: g for g in trainer.groups}
    assert by_name["llm.lora_B"]["lr"] == pytest.approx(4.0 * by_name["llm"]["lr"])
    # No weight decay on norms and biases: the projector's LayerNorm lands in no_decay.
    assert any("ln_q" in n for n in by_name["projector.no_decay"]["param_names"])


def test_frozen_parameters_do_not_move_and_zero_lr_groups_stay_put(setup):
    cfg, data = setup
    trainer = _trainer(
        cfg, data, TrialParams(lr_vision=0.0, lr_projector=1e-2, lr_llm=1e-2, warmup_ratio=0.0), vision=True
    )
    before = _snapshot(trainer.model)
    trainer.step(trainer.train_batch(list(range(4))))
    trainer.step(trainer.train_batch(list(range(4, 8))))
    after = _snapshot(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved <= trainable, sorted(moved - trainable)[:5]
    assert not [n for n in moved if ".visual.blocks." in n], "vision had lr 0 but moved"
    assert any(".visual.blocks." in n and ".lora_" in n for n in trainable)
    assert any(".language_model." in n and "lora_B" in n for n in moved)
    assert any(".merger." in n for n in moved)


def test_update_size_follows_each_groups_learning_rate(setup):
    cfg, data = setup
    # Adam's first step moves each parameter by ~lr: a 10x larger LR gives a 10x larger step.
    steps = {}
    for lr in (1e-4, 1e-3):
        trainer = _trainer(cfg, data, TrialParams(lr_llm=lr, lr_projector=lr, warmup_ratio=0.0))
        trainer.scheduler.step = lambda: None  # keep the LR constant for this measurement
        name = next(
            n
            for n, p in trainer.model.named_parameters()
            if "merger" in n and n.endswith("mlp.0.weight") and p.requires_grad
        )
        before = dict(trainer.model.named_parameters())[name].detach().clone()
        trainer.step(trainer.train_batch(list(range(8))))
        after = dict(trainer.model.named_parameters())[name].detach()
        steps[lr] = (after - before).abs().mean().item()
    assert steps[1e-3] / steps[1e-4] == pytest.approx(10.0, rel=0.05)


def test_zero_ocr_weight_gives_zero_gradient_from_ocr_samples(setup):
    cfg, data = setup
    trainer = _trainer(cfg, data, TrialParams(weight_ocr=0.0))
    ocr = [i for i, r in enumerate(data.train) if r.task == "ocr"][:4]
    trainer.model.zero_grad()
    batch = trainer._to_device(trainer.train_batch(ocr))
    labels, task_ids = batch.pop("labels"), batch.pop("task_ids")
    per_task, counts = task_losses(trainer.model(**batch).logits, labels, task_ids, len(trainer.tasks))
    trainer.balance.backward(per_task, counts, [p for g in trainer.groups for p in g["params"]])
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    assert per_task[trainer.task_index["ocr"]] > 0 and counts.sum() > 0


def test_weighted_sum_averages_per_task_then_weights():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 1] = 5.0  # confident and right for sample 0's one token
    labels = torch.tensor([[-100, 1, -100], [-100, 2, 3]])
    task_ids = torch.tensor([0, 1])
    means, counts = task_losses(logits, labels, task_ids, 2)
    loss = weighted_sum(means, torch.tensor([0.25, 0.75]))
    ce = torch.nn.functional.cross_entropy
    m0 = ce(logits[0, 0:1], labels[0, 1:2])
    m1 = ce(logits[1, 0:2], labels[1, 1:3])
    assert means.tolist() == pytest.approx([m0.item(), m1.item()])
    assert counts.tolist() == [1.0, 2.0]
    assert loss.item() == pytest.approx(0.25 * m0.item() + 0.75 * m1.item())


def test_same_seed_gives_the_same_metrics_and_reports_each_eval(setup):
    cfg, data = setup
    cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"steps": 4, "eval_every": 2})})
    reports: list[tuple[int, dict]] = []
    a = run_trial(TrialParams(), cfg.budget, lambda s, m: reports.append((s, m)), cfg=cfg, data=data)
    b = run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data)
    keys = ["cer", "iou", "parse_fail_rate", "val_loss_ocr", "val_loss_grounding"]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert [s for s, _ in reports] == [2, 4]
    assert all({"cer", "iou", "steps"} <= set(m) for _, m in reports)


def test_a_codec_given_through_the_base_writes_the_answers_and_reads_the_predictions(setup):
    """A box format of the caller's own, given with its base (as benchmarks/scenario_pilots
    does), without touching the CODECS registry."""
    import dataclasses

    from vlsweep.trials import CODECS, BoxCodec

    cfg, data = setup
    shipped = load_base(cfg.model).codec
    calls = {"encode": 0, "decode": 0}

    def encode(box, size, resized):
        calls["encode"] += 1
        return shipped.encode(box, size, resized)

    def decode(text, size, resized):
        calls["decode"] += 1
        return shipped.decode(text, size, resized)

    registry = dict(CODECS)
    base = dataclasses.replace(load_base(cfg.model), codec=BoxCodec("counted", encode, decode))
    run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base)
    assert calls["encode"] > 0 and calls["decode"] == sum(r.task == "grounding" for r in data.val)
    assert dict(CODECS) == registry, "the registry is left as it was"


def test_a_kept_base_model_gets_a_fresh_adapter_each_trial(setup):
    cfg, data = setup
    base = load_base(cfg.model)
    before = _snapshot(base.model)
    run_trial(TrialParams(lr_llm=5e-2, lr_projector=5e-2), cfg.budget, cfg=cfg, data=data, base=base)
    after = _snapshot(base.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before), "training leaked into the base model"
    assert not any("lora" in n for n, _ in base.model.named_parameters())


def test_outputs_written(setup, tmp_path):
    cfg, data = setup
    result = run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, output_dir=tmp_path, eval_base=True)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    import json

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"cer", "iou", "base", "steps"} <= set(saved) and {"cer", "iou"} <= set(saved["base"])
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    row = json.loads(log[-1])
    assert {"loss_ocr", "loss_grounding", "grad_norm_llm", "lr_llm"} <= set(row)
    assert result["cer"] == saved["cer"]
    assert saved["cpu_seconds"] > 0  # what the trial's process spent, recorded with its metrics


@pytest.mark.parametrize("phase", ["training", "evaluation", "setup"])
def test_running_out_of_gpu_memory_names_the_step_and_batch_and_leaves_the_base_clean(
    setup, monkeypatch, phase
):
    """torch's real OutOfMemoryError, raised inside the training step (or the evaluation)
    of the third step, or once the adapter is attached, becomes TrialOutOfMemory with the
    step, the batch size and the fix; the adapter is gone from the kept base model, so the
    next trial starts clean."""
    import gc
    import weakref

    from vlsweep.errors import TrialOutOfMemory

    cfg, data = setup
    budget = cfg.budget.model_copy(update={"steps": 4, "eval_at": [3], "eval_every": None})
    base = load_base(cfg.model)
    method = {"training": "step", "evaluation": "evaluate", "setup": "attach"}[phase]
    real = getattr(Trainer, method)
    trainers: list[weakref.ref] = []

    def exhausted(self, *args, **kwargs):
        trainers.append(weakref.ref(self))
        if phase == "setup":
            real(self, *args, **kwargs)  # attached, then out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
        step = args[1] if phase == "training" else self.steps_done
        if step == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, exhausted)
    with pytest.raises(TrialOutOfMemory) as caught:
        run_trial(TrialParams(), budget, cfg=cfg, data=data, base=base)
    err = caught.value
    assert (err.step, err.phase) == (0 if phase == "setup" else 3, phase)
    if phase == "setup":
        assert str(err).startswith("out of GPU memory attaching the adapter, before step 1")
    elif phase == "training":
        assert str(err).startswith(
            f"out of GPU memory at step 3 with batch {budget.batch_size}; lower budget.batch_size, "
            "set model.gradient_checkpointing: true or quantize the base (model.quantization: {bits: 4})"
        )
    else:
        assert str(err).startswith(
            f"out of GPU memory evaluating at step 3 with eval batch {budget.eval_batch_size}; "
            "lower budget.eval_batch_size"
        )
    assert str(err).endswith("(CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0))")
    assert "a larger share of a GPU (resources.gpus_per_trial, up to 1) or more GPUs" in str(err)
    assert "(resources.train_workers, one GPU each; strategy: fsdp shards the model too)" in str(err)
    assert err.__context__ is None, "torch's error (and the step's tensors) would live on"
    del caught, err
    gc.collect()
    assert all(ref() is None for ref in trainers), "the trial's Trainer outlived its failure"
    assert not any("lora" in n for n, _ in base.model.named_parameters())
    monkeypatch.undo()
    after = run_trial(TrialParams(), budget, cfg=cfg, data=data, base=base)
    assert after["steps"] == 4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_base_trains_float32_parameters_under_autocast(setup, dtype):
    """Mixed precision, as on a GPU (autocast runs on the CPU too): the frozen base stays
    in the half dtype, the trained parameters are float32 and move, the loss is finite;
    float16 trains with a loss scaler. The base is left as it was for the next trial."""
    cfg, data = setup
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": dtype})})
    budget = cfg.budget.model_copy(update={"steps": 3, "eval_at": [3], "eval_every": None})
    base = load_base(cfg.model)
    half = getattr(torch, dtype)
    assert base.model.dtype == half
    trainer = Trainer(TrialParams(), budget, cfg=cfg, data=data, base=base)
    assert trainer.amp_dtype == half and (trainer.scaler is not None) == (dtype == "float16")
    trainer.attach()
    trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad and p.is_floating_point()]
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert frozen and all(p.dtype == half for p in frozen)
    before = {n: p.detach().clone() for n, p in trained.items()}
    trainer.model.train()
    for step in (1, 2):
        out = trainer.step(trainer.train_batch(list(range(budget.batch_size))), step)
        assert math.isfinite(float(out["loss"])), out
    assert any(not torch.equal(before[n], p) for n, p in trained.items()), "nothing trained"
    metrics = trainer.evaluate()
    assert metrics["cer"] >= 0.0 and 0.0 <= metrics["iou"] <= 1.0
    trainer.detach()
    assert all(p.dtype == half for p in base.model.parameters() if p.is_floating_point())
    # A whole trial on it, end to end.
    assert run_trial(TrialParams(), budget, cfg=cfg, data=data, base=base)["steps"] == 3


def test_float16_refuses_a_loss_balance_a_loss_scaler_would_change(setup):
    from vlsweep.errors import UserInputError

    cfg, data = setup
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "float16"})})
    with pytest.raises(UserInputError, match="model.dtype: float16 trains with a loss scaler"):
        Trainer(TrialParams(loss_balance="famo"), cfg.budget, cfg=cfg, data=data, base=load_base(cfg.model))


def test_trial_out_of_memory_survives_pickling():
    """A pool worker's error reaches its parent intact (keyword-only constructor)."""
    import pickle

    from vlsweep.errors import TrialOutOfMemory

    err = TrialOutOfMemory(step=7, phase="training", batch=8, detail="CUDA out of memory.")
    back = pickle.loads(pickle.dumps(err))
    assert (back.step, back.phase, back.batch, str(back)) == (7, "training", 8, str(err))
