"""The sweep config resolved once (vlsweep/search/plan.py): what the driver runs on is
derived in one place, from the config alone, and the config itself parses its space and
constraints once, when it is validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.errors import UserInputError
from vlsweep.search import plan
from vlsweep.search.config import SweepConfig, load_sweep_config, sanitized_config


def test_the_plan_holds_what_the_sweep_derives_from_the_config(tmp_path, monkeypatch, demo_data):
    path = sweep_cfg(tmp_path, tmp_path / "ckpt", demo_data)
    edit_yaml(
        path,
        search={
            "early_stopping": "mo-asha",
            "grace_steps": 1,
            "reproducible": True,
            "learn_from_rungs": True,
        },
        constraints=["cer <= 0.5"],
    )
    cfg, base_dir = load_sweep_config(path)
    monkeypatch.chdir(tmp_path)
    p = plan.resolve(cfg, base_dir)
    assert p.space is cfg.search_space, "the space parsed when the config was validated"
    assert set(p.distributions) == {"lr_llm", "lora_r"}
    assert p.constraints == [("cer", "<=", 0.5)]
    assert p.objective_names == ["cer", "iou"] and p.directions == ["minimize", "maximize"]
    assert p.window == 2 and p.sampler_rungs and p.sampler_rungs[0] == 1
    assert p.recorded_config == sanitized_config(cfg, base_dir)
    assert p.out_root == (tmp_path / "runs").resolve()
    assert p.ray_storage_path == str(p.out_root / "ray")
    # Each trial evaluates at every rung too, with the data paths the study records.
    assert set(p.sampler_rungs) <= set(p.trial_spec["budget"]["eval_at"])
    paths = [src["path"] for split in ("train", "val") for src in p.trial_spec["data"][split]]
    assert paths and all(Path(x).is_absolute() for x in paths), "workers get the data as the study records it"
    assert p.request == {"CPU": cfg.resources.cpus_per_trial}
    edit_yaml(path, search={"learn_from_rungs": False, "reproducible": False})
    again = plan.resolve(load_sweep_config(path)[0], base_dir)
    assert again.window is None and again.sampler_rungs == []
    assert set(p.sampler_rungs) <= set(again.trial_spec["budget"]["eval_at"]), "rungs are still evaluated"


def test_a_config_parses_its_space_once_and_refuses_a_bad_one_without_assert(tmp_path, demo_data):
    raw = yaml.safe_load(sweep_cfg(tmp_path, tmp_path / "ckpt", demo_data).read_text())
    cfg = SweepConfig.model_validate(raw)
    assert cfg.search_space is cfg.search_space
    bad = SweepConfig.model_validate({**raw, "space": {"lr_llm": {"type": "float", "low": 1, "high": 0}}})
    with pytest.raises(UserInputError, match=r"^space\.lr_llm: "):
        _ = bad.search_space
    bounded = SweepConfig.model_validate({**raw, "constraints": ["iou >= 0.25"]})
    assert bounded.constraint_bounds == [("iou", ">=", 0.25)]
    # Parsed once, but still a value: two configs of the same file are equal, and a copy
    # with another space parses its own.
    assert SweepConfig.model_validate(raw) == cfg
    other = cfg.model_copy(update={"space": {"lr_llm": {"type": "float", "low": 1e-3, "high": 1e-2}}})
    assert (
        other.search_space.searched["lr_llm"].low == 1e-3 and cfg.search_space.searched["lr_llm"].low == 1e-4
    )
