"""Every finished trial's files stored as Optuna artifacts; retention; what export and
eval make of them: the stored adapter scores as its trial did, and so does the base with
it merged in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tests.support.sweeps import sweep_cfg
from vlsweep import artifacts
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep

pytestmark = pytest.mark.integration


def _export(url: str, trial: int, fmt: str, out: Path) -> subprocess.CompletedProcess:
    """``vlsweep export t --pick trial:N --format FMT -o OUT``, run where the study is."""
    args = ("export", "t", "--storage", url, "--pick", f"trial:{trial}", "--format", fmt, "-o", str(out))
    return _cli(*args, cwd=out.parent)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def stored_sweep(ray_local, tmp_path_factory, tiny_checkpoint, demo_data):
    """A sweep that trains the projector whole (so the adapter carries modules_to_save),
    keeping the files of the front's trials and of the last one to finish."""
    tmp = tmp_path_factory.mktemp("stored")
    path = sweep_cfg(tmp, tiny_checkpoint("qwen2_vl"), demo_data, trials=5)
    raw = yaml.safe_load(path.read_text())
    raw["lora"] = {"vision": True, "projector": "full"}
    raw["artifacts"] = {"keep_last": 1}
    path.write_text(yaml.safe_dump(raw))
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp / 'vlsweep.db'}"
    run_sweep(cfg, base_dir, url, log=lambda _m: None)
    return tmp, url, optuna.load_study(study_name="t", storage=url)


def test_each_kept_trial_has_its_files_in_the_store_beside_the_database(stored_sweep):
    tmp, url, study = stored_sweep
    assert study.user_attrs[artifacts.STORE_ATTR] == str(tmp / "vlsweep-artifacts")
    store = artifacts.store_of(study)
    trials = study.get_trials()
    directions = [d.name.lower() for d in study.directions]
    keep = artifacts.kept(trials, directions, keep_last=1)
    assert 1 <= len(keep) < len(trials)
    names = {name for _, name in artifacts.TRIAL_FILES}
    stored_ids = set()
    removed = artifacts.removed_ids(study)
    for t in trials:
        files = artifacts.trial_files(t, removed)
        if t.number in keep:
            assert set(files) == names, (t.number, files)
            # Optuna's own reader lists them, as the dashboard does.
            metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
            assert {m.filename for m in metas} >= names
            stored_ids |= {m.artifact_id for m in files.values()}
            with store.open_reader(files["metrics.json"].artifact_id) as f:
                assert json.load(f)["cer"] == pytest.approx(t.values[0])
        else:
            assert files == {}, (t.number, files)
    # Retention removed the others' blobs from the store, not just their links.
    assert {p.name for p in (tmp / "vlsweep-artifacts").iterdir()} == stored_ids


def test_stored_adapter_scores_as_its_trial_and_merged_within_1e4(stored_sweep, demo_data):
    tmp, url, study = stored_sweep
    keep = artifacts.kept(study.get_trials(), ["minimize", "maximize"], keep_last=1)
    trial = study.trials[max(keep)]
    out = _export(url, trial.number, "adapter", tmp / "adapter")
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["model.visual.merger"]
    # The trial's evaluation settings (prompts, max_new_tokens, validation data) travel in
    # the vlsweep export's train.yaml; with it, eval scores exactly as the trial was scored.
    out = _export(url, trial.number, "vlsweep", tmp / "v")
    assert out.returncode == 0, out.stderr[-3000:]
    train_yaml = str(tmp / "v" / "train.yaml")
    out = _cli("eval", "--config", train_yaml, "--adapter", str(tmp / "adapter"), "--json", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads(out.stdout)
    assert [scored["cer"], scored["iou"]] == pytest.approx(trial.values, abs=1e-6)
    assert scored.keys() >= {"acc_iou50", "parse_fail_rate", "val_loss_ocr", "val_loss_grounding"}

    out = _export(url, trial.number, "merged", tmp / "merged")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp / "merged" / "adapter_config.json").exists()
    out = _cli("eval", "--config", train_yaml, "--model", str(tmp / "merged"), "--json", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    merged_scores = json.loads(out.stdout)
    assert [merged_scores["cer"], merged_scores["iou"]] == pytest.approx(trial.values, abs=1e-4)

    # A checkpoint for any tool: the Auto classes load it, with no peft in between.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    merged = AutoModelForImageTextToText.from_pretrained(tmp / "merged")
    AutoProcessor.from_pretrained(tmp / "merged")
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())


def test_export_of_a_trial_whose_files_retention_removed_says_why(stored_sweep):
    tmp, url, study = stored_sweep
    keep = artifacts.kept(study.get_trials(), ["minimize", "maximize"], keep_last=1)
    gone = next(t for t in study.get_trials() if t.number not in keep)
    out = _export(url, gone.number, "adapter", tmp / "gone")
    assert out.returncode == 2, out.stderr
    assert f"error: trial {gone.number} has no stored adapter_config.json" in out.stderr
    assert "artifacts.keep_last" in out.stderr
