from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.support.helpers import train_config, wait_for_http
from vlsweep.cli import app

runner = CliRunner()


def _write(tmp_path: Path, cfg: dict | str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_help_lists_the_commands_and_imports_neither_torch_nor_ray():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vlsweep.cli import app; from typer.testing import CliRunner;"
            "r = CliRunner().invoke(app, ['--help']); print(r.output);"
            "print('HEAVY', sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for cmd in ("train", "validate", "data"):
        assert cmd in out
    assert "HEAVY []" in out, out


@pytest.mark.parametrize(
    "mutation, field",
    [
        ({"budget": {"steps": 0}}, "budget.steps"),
        ({"params": {"lr_llm": -1.0}}, "params.lr_llm"),
        ({"params": {"weight_ocr": 1.5}}, "params.weight_ocr"),
        ({"lora": {"projector": "half"}}, "lora.projector"),
        ({"model": {"dtype": "float8"}}, "model.dtype"),
        ({"budgett": {"steps": 3}}, "budgett"),
        ({"params": {"lr_vison": 1e-3}}, "params.lr_vison"),
        ({"data": {"train": {"path": "x.json", "format": "sharegpt"}}}, "data.train.0"),
    ],
)
def test_bad_config_exits_2_and_names_the_field(tmp_path, demo_data, mutation, field):
    cfg = train_config("builtin:tiny-qwen2-vl", demo_data)
    for key, value in mutation.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(cfg.get(key), dict) else value
    path = _write(tmp_path, cfg)
    for command in ("validate", "train"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        errors = _errors(result)
        assert errors and any(f"{path}: {field}" in e for e in errors), result.stderr
        assert "Traceback" not in result.output


def test_all_config_problems_are_reported_at_once(tmp_path, demo_data):
    cfg = train_config("builtin:tiny-qwen2-vl", demo_data)
    cfg["budget"]["steps"] = -1
    cfg["params"] = {"lr_llm": "fast", "lora_r": 0}
    result = runner.invoke(app, ["validate", str(_write(tmp_path, cfg))])
    assert result.exit_code == 2
    assert len(_errors(result)) == 3, result.stderr


def test_bad_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "name: x\nmodel: [unclosed\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert _errors(result)[0].startswith(f"error: {path}:")


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such config file" in result.stderr


def test_bad_data_exits_2_with_file_and_line(tmp_path, demo_data):
    bad = tmp_path / "train.jsonl"
    lines = (demo_data / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    assert rec["task"] == "grounding"
    rec["box"] = [50, 50, 10, 10]
    rec["image"] = str(demo_data / rec["image"])
    bad.write_text(
        json.dumps({"image": "gone.png", "task": "ocr", "text": "A"}) + "\n" + json.dumps(rec) + "\n"
    )
    cfg = train_config("builtin:tiny-qwen2-vl", demo_data)
    cfg["data"]["train"] = str(bad)
    path = _write(tmp_path, cfg)
    for command in ("validate", "train"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        errors = _errors(result)
        assert any(f"{bad}:1: " in e and "does not exist" in e for e in errors), errors
        assert any(f"{bad}:2: " in e and "x2 > x1" in e for e in errors), errors
        assert "Traceback" not in result.output
    check = runner.invoke(app, ["data", "check", str(bad)])
    assert check.exit_code == 2 and len(_errors(check)) == 2


def test_a_task_without_validation_samples_is_an_error(tmp_path, demo_data):
    only_ocr = tmp_path / "val.jsonl"
    lines = [json.loads(x) for x in (demo_data / "val.jsonl").read_text().splitlines()]
    only_ocr.write_text(
        "".join(
            json.dumps({**r, "image": str(demo_data / r["image"])}) + "\n"
            for r in lines
            if r["task"] == "ocr"
        )
    )
    cfg = train_config("builtin:tiny-qwen2-vl", demo_data)
    cfg["data"]["val"] = str(only_ocr)
    result = runner.invoke(app, ["validate", str(_write(tmp_path, cfg))])
    assert result.exit_code == 2
    assert any("data.val: no samples of task 'grounding'" in e for e in _errors(result))


def test_unknown_builtin_and_missing_model_dir(tmp_path, demo_data):
    for name, needle in [
        ("builtin:tiny-nothing", "unknown builtin model"),
        (str(tmp_path / "no-such-dir"), "does not exist"),
    ]:
        path = _write(tmp_path, train_config(name, demo_data))
        result = runner.invoke(app, ["train", str(path)])
        assert result.exit_code == 2 and any(needle in e for e in _errors(result)), result.output


def test_pickle_only_checkpoints_are_refused(tmp_path, demo_data):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04")
    result = runner.invoke(app, ["train", str(_write(tmp_path, train_config(ckpt, demo_data)))])
    assert result.exit_code == 2 and "pickle" in result.stderr


def test_data_demo_then_check(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["data", "demo", str(out), "--n-train", "6", "--n-val", "4"])
    assert result.exit_code == 0, result.output
    check = runner.invoke(app, ["data", "check", str(out / "train.jsonl"), str(out / "val.jsonl")])
    assert check.exit_code == 0 and check.stdout.count("ok: ") == 2


def test_train_writes_metrics_and_adapter(tmp_path, tiny_checkpoint, demo_data):
    path = _write(tmp_path, train_config(tiny_checkpoint("qwen2_vl"), demo_data))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(path), "-o", str(out), "--eval-base"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cer"] >= 0 and 0 <= metrics["iou"] <= 1
    assert {"cer", "iou"} <= set(metrics["base"])
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads(result.stdout.strip().splitlines()[-1])["cer"] == metrics["cer"]


@pytest.mark.parametrize(("host", "warns"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_dashboard_listens_on_loopback_and_warns_otherwise(tmp_path, host, warns):
    import socket

    import optuna

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="s", storage=url, directions=["minimize", "maximize"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "dashboard",
            "--storage",
            url,
            "--host",
            host,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = wait_for_http(f"http://127.0.0.1:{port}/api/studies", proc)
        assert b'"study_name": "s"' in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert bool(warning) == warns, err
    if warns:
        assert "no authentication" in warning[0] and "0.0.0.0" in warning[0]


def test_builtin_verify_checks_the_shipped_weights_and_names_a_damaged_file(tmp_path, monkeypatch):
    import shutil

    from vlsweep.demo import builtin

    ok = runner.invoke(app, ["builtin", "verify"])
    assert ok.exit_code == 0, ok.output
    assert {line.split(":")[1] for line in ok.output.splitlines()} == set(builtin.RECIPES)
    assert all(line.endswith("checksums ok") for line in ok.output.splitlines())

    shutil.copytree(builtin.builtin_path("tiny-qwen2-vl"), tmp_path / "tiny-qwen2-vl")
    (tmp_path / "tiny-qwen2-vl" / "config.json").write_text("{}")
    shutil.copytree(builtin.builtin_path("tiny-llava"), tmp_path / "tiny-llava")
    (tmp_path / "tiny-llava" / "model.safetensors").unlink()
    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path)
    bad = runner.invoke(app, ["builtin", "verify"])
    assert bad.exit_code == 2
    errors = _errors(bad)  # both damaged models, each file named
    assert errors[0].endswith("tiny-llava/model.safetensors is missing"), errors
    assert errors[1].endswith("tiny-qwen2-vl/config.json does not match its checksum in SHA256SUMS"), errors
    assert "vlsweep builtin rebuild NAME -o DIR" in errors[-1]
    unknown = runner.invoke(app, ["builtin", "verify", "tiny-gpt"])
    assert unknown.exit_code == 2 and _errors(unknown)[0].startswith(
        "error: NAME: unknown builtin model 'tiny-gpt'"
    )


def test_builtin_rebuild_refuses_a_non_empty_directory_and_an_unknown_name(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    full = runner.invoke(app, ["builtin", "rebuild", "tiny-qwen2-vl", "-o", str(tmp_path)])
    assert full.exit_code == 2 and "exists and is not empty; give a new directory" in _errors(full)[0]
    assert (tmp_path / "keep.txt").read_text() == "mine"
    unknown = runner.invoke(app, ["builtin", "rebuild", "tiny-gpt", "-o", str(tmp_path / "new")])
    assert unknown.exit_code == 2 and "unknown builtin model 'tiny-gpt'" in _errors(unknown)[0]
    assert not (tmp_path / "new").exists()
