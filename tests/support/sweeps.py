"""Helpers of the sweep tests: a small sweep config, the study invariants, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from tests.support.helpers import train_config


def sweep_cfg(tmp_path: Path, ckpt: Path, data: Path, **search) -> Path:
    """A sweep of the tiny checkpoint: 4-step trials evaluated every 2 steps, two parameters."""
    cfg = train_config(ckpt, data, budget={"steps": 4, "batch_size": 4, "max_new_tokens": 8, "eval_every": 2})
    cfg.pop("seed")
    cfg.update(
        name="t",
        space={
            "lr_llm": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "lora_r": {"type": "categorical", "choices": [2, 4]},
        },
        search={"trials": 4, "max_concurrent": 2, "baseline": False, **search},
        output_dir=str(tmp_path / "runs"),
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def edit_yaml(path: Path, **sections: dict) -> None:
    """Update sections of a YAML config in place (``budget={"steps": 9}``)."""
    raw = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(raw.get(key), dict) else value
    path.write_text(yaml.safe_dump(raw))


def check_invariants(study: optuna.Study) -> None:
    """Nothing left RUNNING or WAITING, and one Optuna trial per Ray trial."""
    trials = study.get_trials()
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials), [
        (t.number, t.state) for t in trials
    ]
    ray_ids = [t.user_attrs["ray_trial_id"] for t in trials if "ray_trial_id" in t.user_attrs]
    assert len(ray_ids) == len(set(ray_ids)), "a Ray trial maps to more than one Optuna trial"


def vlsweep(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real command line, in its own session (so a test can signal its process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "vlsweep.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
