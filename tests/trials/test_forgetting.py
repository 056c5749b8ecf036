"""Forgetting, KL(base || fine-tuned) on the retention set: the math on hand-made
distributions, and in a trial (0 for the base itself, the base's answers computed once)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.support.helpers import train_config
from vlsweep.config import TrainConfig
from vlsweep.params import TrialParams
from vlsweep.trials import forgetting, load_base, load_data, run_trial
from vlsweep.trials.engine import Trainer


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_the_kl_of_a_model_to_itself_is_zero_and_of_another_is_the_coarsened_kl():
    base = torch.log(torch.tensor([[0.7, 0.2, 0.05, 0.05]]))
    tuned = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    ref = forgetting.reference_of(base, k=2)
    assert ref.ids.tolist() == [[0, 1]]
    assert forgetting.kl_to_reference(base, ref).item() == pytest.approx(0.0, abs=1e-6)
    # Top-2 kept, the rest one bucket: p = (0.7, 0.2, 0.1), q = (0.4, 0.3, 0.3).
    got = forgetting.kl_to_reference(tuned, ref).item()
    assert got == pytest.approx(_kl([0.7, 0.2, 0.1], [0.4, 0.3, 0.3]), rel=1e-5)
    # Never more than the full KL; equal to it with every token kept.
    assert got <= _kl([0.7, 0.2, 0.05, 0.05], [0.4, 0.3, 0.2, 0.1]) + 1e-9
    full = forgetting.kl_to_reference(tuned, forgetting.reference_of(base, k=4)).item()
    assert full == pytest.approx(_kl([0.7, 0.2, 0.05, 0.05], [0.4, 0.3, 0.2, 0.1]), rel=1e-4)


def test_answer_log_probs_keep_the_rows_that_predict_answer_tokens():
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([5.0, 0.0, 0.0])  # predicts sample 0's token at position 2
    labels = torch.tensor([[-100, -100, 0, -100], [-100, 1, 2, -100]])
    rows = forgetting.answer_log_probs(logits, labels)
    assert rows.shape == (3, 3)
    assert rows[0].argmax().item() == 0 and rows[0].exp().sum().item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, demo_data):
    raw = train_config(tiny_checkpoint("qwen2_vl"), demo_data, budget={"steps": 4}, lora={"vision": True})
    raw["data"]["retain"] = str(demo_data / "retain.jsonl")
    cfg = TrainConfig.model_validate(raw)
    return cfg, load_data(cfg.data, Path(".")), load_base(cfg.model)


def test_a_trial_measures_forgetting_and_the_base_answers_once(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("VLSWEEP_CACHE", str(tmp_path))
    monkeypatch.setattr(forgetting, "_MEMORY", {})
    cfg, data, base = setup
    assert len(data.retain) == 64
    said: list[str] = []
    low = run_trial(
        TrialParams(lr_llm=1e-5), cfg.budget, cfg=cfg, data=data, base=base, eval_base=True, log=said.append
    )
    high = run_trial(TrialParams(lr_llm=1e-2), cfg.budget, cfg=cfg, data=data, base=base, log=said.append)
    assert low["base"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < low["forgetting"] < high["forgetting"]
    computed = [m for m in said if m.startswith("retention reference")]
    assert len(computed) == 1 and "computed once" in computed[0]  # the second trial reused it
    (kept,) = (tmp_path / "retain").glob("*.pt")
    # A new process (no memory) reads the file instead of running the base again.
    monkeypatch.setattr(forgetting, "_MEMORY", {})
    trainer = Trainer(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base)
    monkeypatch.setattr(trainer, "_retain_log_probs", lambda _m: pytest.fail("recomputed"))
    ref = trainer.retention_reference(said.append)
    assert "from " + str(kept) in said[-1] and ref.logp.shape[1] == forgetting.TOPK


def test_no_retention_set_means_no_forgetting_metric(setup):
    cfg, data, base = setup
    data = type(data)(train=data.train, val=data.val)
    result = run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base)
    assert "forgetting" not in result
