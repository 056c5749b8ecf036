"""A sweep whose trials' files and Ray's results and checkpoints live in object storage
(moto's S3 server on loopback, with credentials of its own): the kept trials' files are
in the bucket, retention deletes there, no checkpoint or unfinished file is left, and
export and the dashboard read from it."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import boto3
import optuna
import pytest
from ray.tune import Callback

from tests.support.helpers import wait_for_http
from tests.support.sweeps import check_invariants, edit_yaml, sweep_cfg
from vlsweep import artifacts
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep

pytestmark = pytest.mark.integration


class _Checkpoints(Callback):
    """Where Tune wrote each trial's checkpoints."""

    def __init__(self):
        self.paths: list[str] = []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.paths.append(checkpoint.path)


def _keys(bucket: str, prefix: str = "") -> set[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_sweep_on_s3_stores_prunes_exports_and_serves_there(
    s3, tmp_path, tiny_checkpoint, demo_data, faults_record
):
    bucket = s3["bucket"]
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=3)
    edit_yaml(
        path,
        budget={"checkpoint_steps": 2},
        artifacts={"store": f"s3://{bucket}", "keep_last": 1},
        ray={"storage_path": f"s3://{bucket}/ray"},
    )
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    made = _Checkpoints()
    # run_sweep starts its own Ray here: its workers get the AWS_* variables of this process.
    run_sweep(cfg, base_dir, url, callbacks=[made], log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [
        t.user_attrs.get("error") for t in trials
    ]
    assert study.user_attrs[artifacts.STORE_ATTR] == f"s3://{bucket}"

    # The kept trials' files, and nothing else, at the bucket's top level: retention deleted
    # the others' there, and no trial left a file it had begun to store.
    keep = artifacts.kept(trials, ["minimize", "maximize"], keep_last=1)
    removed = artifacts.removed_ids(study)
    linked = {m.artifact_id for t in trials for m in artifacts.trial_files(t, removed).values()}
    assert 1 <= len(keep) < len(trials) and removed
    assert {k for k in _keys(bucket) if not k.startswith("ray/")} == linked
    # Ray's results went to the bucket too; the trials' checkpoints were removed as they ended.
    ray_keys = _keys(bucket, "ray/")
    assert any("events.out.tfevents" in k for k in ray_keys), "\n".join(sorted(ray_keys))
    assert made.paths and all(p.startswith(f"{bucket}/ray/") for p in made.paths), made.paths
    assert not [k for k in ray_keys if "/checkpoint_" in k], sorted(k for k in ray_keys if "checkpoint_" in k)

    kept = trials[max(keep)]
    for fmt in ("adapter", "merged"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "vlsweep.cli",
                "export",
                "t",
                "--storage",
                url,
                "--pick",
                f"trial:{kept.number}",
            ]
            + ["--format", fmt, "-o", str(tmp_path / fmt)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "config.json").is_file() and not (
        tmp_path / "merged" / "adapter_config.json"
    ).exists()

    # optuna-dashboard serves a kept trial's file from the bucket.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlsweep.cli", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies", proc, seconds=60)
        meta = artifacts.trial_files(kept, removed)["metrics.json"]
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{kept._trial_id}/{meta.artifact_id}",
            timeout=10,
        ).read()
        with artifacts.store_of(study).open_reader(meta.artifact_id) as f:
            assert body == f.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"trial files (artifacts) from s3://{bucket}" in err, err[-2000:]
    faults_record("S3 store (artifacts and ray.storage_path)", study, planned=3)
