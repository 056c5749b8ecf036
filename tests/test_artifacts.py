"""The artifact store of a sweep's trial files: write, link, list, retention, download."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from vlsweep import artifacts
from vlsweep.errors import UserInputError


def _trial_dir(tmp_path, n: int):
    d = tmp_path / f"trial-{n}"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": n}))
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (d / "metrics.json").write_text(json.dumps({"trial": n}))
    (d / "predictions.jsonl").write_text("{}\n")
    (d / "train_log.jsonl").write_text("{}\n")
    return d


@pytest.fixture
def study_and_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'vlsweep.db'}"
    store_url = artifacts.default_store(url, tmp_path / "runs")
    assert store_url == str(tmp_path / "vlsweep-artifacts")
    study = optuna.create_study(storage=url, directions=["minimize", "maximize"])
    study.set_user_attr(artifacts.STORE_ATTR, store_url)
    store = artifacts.open_store(store_url)  # as the sweep makes it; readers then find it
    # (cer, iou): 0 and 2 on the front, 1 and 3 dominated; 3 finishes last.
    for n, values in enumerate([(0.1, 0.2), (0.5, 0.1), (0.3, 0.6), (0.6, 0.05)]):
        trial = study.ask()
        metas = artifacts.write_trial_files(store, _trial_dir(tmp_path, n))
        artifacts.link(study._storage, trial._trial_id, metas)
        study.tell(trial, values)
    return study, store, tmp_path


def test_optuna_reads_the_links_as_its_own_artifacts(study_and_store):
    study, store, _ = study_and_store
    trial = study.trials[1]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert {m.filename for m in metas} == {n for _, n in artifacts.TRIAL_FILES}
    meta = next(m for m in metas if m.filename == "metrics.json")
    assert meta.mimetype == "application/json"
    with store.open_reader(meta.artifact_id) as f:
        assert json.load(f) == {"trial": 1}


def test_retention_keeps_the_front_and_the_last_n(study_and_store):
    study, store, tmp_path = study_and_store
    assert artifacts.kept(study.trials, ["minimize", "maximize"], keep_last=1) == {0, 2, 3}
    assert artifacts.kept(study.trials, ["minimize", "maximize"], keep_last=0) == {0, 2}
    assert artifacts.kept(study.trials, ["minimize", "maximize"], keep_last=None) == {0, 1, 2, 3}
    assert artifacts.prune(study, store, keep_last=1) == 5  # trial 1's five files
    assert artifacts.prune(study, store, keep_last=1) == 0  # nothing left to remove
    removed = artifacts.removed_ids(study)
    assert artifacts.trial_files(study.trials[1], removed) == {}
    assert len(artifacts.trial_files(study.trials[3], removed)) == 5
    blobs = {p.name for p in (tmp_path / "vlsweep-artifacts").iterdir()}
    assert not blobs & removed and len(blobs) == 15
    with pytest.raises(UserInputError, match=r"trial 1 has no stored adapter_config.json.*keep_last"):
        artifacts.download(study, store, study.trials[1], artifacts.ADAPTER_FILES, tmp_path / "out")
    paths = artifacts.download(study, store, study.trials[3], artifacts.ADAPTER_FILES, tmp_path / "out")
    assert json.loads(paths[0].read_text()) == {"r": 3}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/prefix", "give a bucket alone, s3://BUCKET"),
        ("gs://bucket", "give a directory (shared by every node on a cluster) or s3://BUCKET"),
    ],
)
def test_a_store_optuna_cannot_open_is_a_clear_error(url, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        artifacts.open_store(url)


def test_eval_without_model_or_data_is_exit_2_naming_both():
    out = subprocess.run([sys.executable, "-m", "vlsweep.cli", "eval"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "error: --model: give the model to score" in out.stderr
    assert "error: --data: give the validation data" in out.stderr


def test_eval_of_a_directory_that_is_no_adapter_is_exit_2(tmp_path, tiny_checkpoint, demo_data):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "eval",
            "--model",
            str(tiny_checkpoint("qwen2_vl")),
            "--adapter",
            str(tmp_path),
            "--data",
            str(demo_data / "val.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"error: --adapter: {tmp_path} has no adapter_config.json" in out.stderr


def test_a_resumed_sweep_keeps_its_store_and_an_old_study_stores_nothing(tmp_path, monkeypatch):
    from vlsweep.search.config import SweepConfig
    from vlsweep.search.sweep import artifact_store_url

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'vlsweep.db'}"
    cfg = SweepConfig.model_validate(
        {"data": {"train": "t.jsonl", "val": "v.jsonl"}, "artifacts": {"store": "st"}}
    )
    study = optuna.create_study(storage=url, study_name="new", directions=["minimize", "maximize"])
    assert artifact_store_url(cfg, study, url, tmp_path / "runs") == str(tmp_path / "st")
    study.set_user_attr(artifacts.STORE_ATTR, "/shared/store")
    assert artifact_store_url(cfg, study, url, tmp_path / "runs") == "/shared/store"  # resumed elsewhere
    old = optuna.create_study(storage=url, study_name="old", directions=["minimize", "maximize"])
    old.add_trial(optuna.trial.create_trial(values=[0.1, 0.2]))
    assert artifact_store_url(cfg, old, url, tmp_path / "runs") == artifacts.NONE
