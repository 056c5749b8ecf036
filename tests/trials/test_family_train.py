"""`vlsweep train` on a saved tiny random checkpoint of every family in the module map."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.support.helpers import train_config
from vlsweep.cli import app
from vlsweep.trials.families import FAMILIES


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_runs_on_a_saved_checkpoint_of_each_family(family, tiny_checkpoint, demo_data, tmp_path):
    ckpt = tiny_checkpoint(family)
    cfg = train_config(
        ckpt, demo_data, budget={"steps": 3, "batch_size": 4, "max_new_tokens": 6}, lora={"vision": True}
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert {"cer", "iou", "parse_fail_rate", "val_loss_ocr", "val_loss_grounding"} <= set(metrics)
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
