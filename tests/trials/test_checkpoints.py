"""A trial continued from its checkpoint ends where the uninterrupted trial ends, bit for
bit on the CPU: the trained parameters, the optimizer, the schedule, each loss balance's
own state, the data order and the RNG (dropout) all come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.helpers import train_config
from vlsweep.config import TrainConfig
from vlsweep.params import LOSS_BALANCES, TrialParams
from vlsweep.trials import checkpoints, load_base, load_data, run_trial


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, demo_data):
    raw = train_config(
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        budget={"steps": 6, "batch_size": 4, "max_new_tokens": 8, "eval_every": 2, "checkpoint_steps": 2},
        lora={"vision": True},
    )
    cfg = TrainConfig.model_validate(raw)
    return cfg, load_data(cfg.data, Path(".")), load_base(cfg.model)


def _final(result: dict) -> dict:
    timing = {"train_seconds", "eval_seconds", "load_seconds", "encode_seconds", "cpu_seconds"}
    return {k: v for k, v in result.items() if k not in timing and k != "samples_per_second"}


@pytest.mark.parametrize("balance", LOSS_BALANCES)
def test_a_trial_resumed_from_its_checkpoint_ends_bit_for_bit_as_the_uninterrupted_one(
    setup, balance, tmp_path
):
    cfg, data, base = setup
    # Dropout (torch's RNG), a data strategy (the mixer's order) and vision-first (the
    # step count) all depend on where the trial stands.
    params = TrialParams(
        loss_balance=balance,
        lora_dropout=0.1,
        curriculum_ratio=0.5,
        hard_oversample=2.0,
        vision_first_ratio=0.2,
    )
    reports: list[tuple[int, dict]] = []
    states: dict[int, dict] = {}
    whole = run_trial(
        params,
        cfg.budget,
        lambda s, m: reports.append((s, m)),
        cfg=cfg,
        data=data,
        base=base,
        output_dir=tmp_path / "whole",
        on_checkpoint=lambda step, state: states.__setitem__(step, state),
    )
    assert sorted(states) == [2, 4]  # every 2 steps, not after the last

    # The same trial killed after its checkpoint at step 4 (at step 6, before its evaluation) ...
    def keep(step: int, state: dict) -> None:
        checkpoints.save_checkpoint(state, tmp_path / f"ckpt-{step}")

    def rows(row: dict) -> None:
        if row["step"] == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(params, cfg.budget, cfg=cfg, data=data, base=base, on_checkpoint=keep, on_log_row=rows)
    # ... and run again from it, as a new process would, with what the file holds.
    resumed_reports: list[tuple[int, dict]] = []
    resumed = run_trial(
        params,
        cfg.budget,
        lambda s, m: resumed_reports.append((s, m)),
        cfg=cfg,
        data=data,
        base=base,
        output_dir=tmp_path / "resumed",
        resume=checkpoints.load_checkpoint(tmp_path / "ckpt-4"),
    )
    assert _final(resumed) == _final(whole)
    # Only the evaluations after the checkpoint are made (and reported) again.
    assert [s for s, _ in resumed_reports] == [6] and resumed_reports[-1] == reports[-1]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = lambda d: (tmp_path / d / "train_log.jsonl").read_text().splitlines()  # noqa: E731
    assert [json.loads(r) for r in log("resumed")] == [json.loads(r) for r in log("whole")]


def test_a_checkpoint_of_another_format_is_refused(setup):
    cfg, data, base = setup
    with pytest.raises(ValueError, match="format"):
        run_trial(TrialParams(), cfg.budget, cfg=cfg, data=data, base=base, resume={"format": 0, "step": 2})
