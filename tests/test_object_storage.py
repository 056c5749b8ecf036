"""Object storage that cannot be used is an `error:` with exit 2 before any trial, naming
the key and the fix: wrong credentials, a missing bucket, an endpoint nobody answers on;
for the artifact store and for Ray's storage_path. Against moto's S3 server on loopback
(the ``s3`` fixture), no Ray started: the checks come first."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
import pytest

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.errors import UserInputError
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep


def _refused(tmp_path, tiny_checkpoint, demo_data, **sections) -> str:
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data)
    edit_yaml(path, **sections)
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with pytest.raises(UserInputError) as err:
        run_sweep(cfg, base_dir, url, log=lambda _m: None)
    assert optuna.get_all_study_names(url) == [], "a refused sweep left its study behind"
    return str(err.value)


def test_wrong_credentials_exit_2_naming_the_key_and_the_fix(
    s3, tmp_path, tiny_checkpoint, demo_data, monkeypatch
):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data)
    edit_yaml(path, artifacts={"store": f"s3://{s3['bucket']}"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "launch",
            str(path),
            "--storage",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert error and f"artifacts.store: s3://{s3['bucket']}" in error[0], out.stderr[-2000:]
    assert "the credentials were refused (403" in error[0] and "AWS_ACCESS_KEY_ID" in error[0]
    assert "Traceback" not in out.stderr


def test_a_missing_bucket_is_refused_for_the_store_and_for_ray(s3, tmp_path, tiny_checkpoint, demo_data):
    said = _refused(tmp_path, tiny_checkpoint, demo_data, artifacts={"store": "s3://no-such-bucket"})
    assert "artifacts.store: s3://no-such-bucket" in said and "the bucket does not exist" in said
    said = _refused(tmp_path, tiny_checkpoint, demo_data, ray={"storage_path": "s3://no-such-bucket/ray"})
    assert "ray.storage_path: s3://no-such-bucket/ray" in said and "does not exist" in said


def test_ray_storage_path_with_wrong_credentials_is_refused(
    s3, tmp_path, tiny_checkpoint, demo_data, monkeypatch
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    said = _refused(tmp_path, tiny_checkpoint, demo_data, ray={"storage_path": f"s3://{s3['bucket']}/ray"})
    assert f"ray.storage_path: s3://{s3['bucket']}/ray" in said and "the credentials were refused" in said


def test_an_unreachable_endpoint_is_refused(s3, tmp_path, tiny_checkpoint, demo_data, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    said = _refused(tmp_path, tiny_checkpoint, demo_data, artifacts={"store": f"s3://{s3['bucket']}"})
    assert "cannot reach the endpoint" in said and "AWS_ENDPOINT_URL" in said
    said = _refused(tmp_path, tiny_checkpoint, demo_data, ray={"storage_path": f"s3://{s3['bucket']}/ray"})
    assert "ray.storage_path" in said and "cannot reach the endpoint" in said
