"""The README's main command: `vlsweep train examples/demo-train.yaml --eval-base`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlsweep.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_train_improves_cer_and_iou_over_the_base_model(tmp_path):
    # Builds and caches builtin:tiny-qwen2-vl on first use (minutes), then fine-tunes.
    result = CliRunner().invoke(
        app, ["train", str(ROOT / "examples/demo-train.yaml"), "-o", str(tmp_path), "--eval-base"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    base = metrics["base"]
    # Each by more than the noise of the validation set: CER by a wide margin, IoU by more
    # than the standard error of the base's mean IoU over the grounding samples.
    assert metrics["cer"] < base["cer"] - 0.1, (metrics["cer"], base)
    assert metrics["iou"] - base["iou"] > base["iou_se"], (metrics["iou"], base)


@pytest.mark.slow
def test_the_embedded_demo_sweep_finds_a_front_that_beats_the_baseline(tmp_path):
    """The README's first command, as a user runs it: `vlsweep launch` in an empty
    directory (real local Ray, TPE over all three module learning rates, 16 trials)."""
    import subprocess
    import sys

    import optuna

    run = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "launch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Pareto front of 'demo'" in run.stdout
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'vlsweep.db'}")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 16
    assert all({"lr_vision", "lr_projector", "lr_llm"} <= set(t.params) for t in trials if t.number)
    (baseline,) = [t for t in trials if t.user_attrs.get("baseline")]
    front = study.best_trials
    # A trade-off, not one winner. How many points it has depends on the CPU the builtin
    # model was built on (docs/demo.md, Reproducibility): 3 on the machine the README's
    # figures come from, 2 on an AMD EPYC one (2026-12-02), with the same code.
    assert len(front) >= 2, [t.values for t in front]
    # Some trial of the front dominates the un-tuned baseline: CER lower by far more than
    # its noise, IoU higher (by less than IoU's standard error, ~0.02: README says so).
    assert any(t.values[0] < baseline.values[0] - 0.05 and t.values[1] > baseline.values[1] for t in front), (
        [t.values for t in front],
        baseline.values,
    )
