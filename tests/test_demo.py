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
    assert metrics["cer"] < base["cer"], (metrics["cer"], base)
    assert metrics["iou"] > base["iou"], (metrics["iou"], base)
