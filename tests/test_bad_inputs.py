"""The bad-input corpus (tests/bad_inputs/): every malformed config and dataset exits with
code 2, `error:` lines that name the field or file:line, no traceback, and nothing written.

Each config under configs/ says what its error must say in `# expect:` lines; the datasets
under data-cases/ say it in data-cases/expected.yaml. Configs run from their own
directory (model paths in them are relative to it, as a user's shell would be).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlsweep.cli import app

CORPUS = Path(__file__).parent / "bad_inputs"
CONFIGS = sorted((CORPUS / "configs").glob("*.yaml"))
DATA_CASES = yaml.safe_load((CORPUS / "data-cases" / "expected.yaml").read_text())
runner = CliRunner()


def _expected(config: Path) -> list[str]:
    return [
        line.removeprefix("# expect:").strip()
        for line in config.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def _check_rejected(args: list[str], expect: list[str], workdir: Path) -> None:
    """``vlsweep ARGS`` exits 2 with the expected error lines and writes nothing."""
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    result = runner.invoke(app, args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, (args, result.output)
    assert errors, result.stderr
    for needle in expect:
        assert any(needle in e for e in errors), (needle, errors)
    # Nothing escaped as an exception, and every line of the report is an error line.
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("error: ") for line in lines), result.stderr
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before, "something was written"


def test_the_corpus_holds_at_least_30_inputs():
    assert len(CONFIGS) + len(DATA_CASES) >= 30
    assert all(_expected(c) for c in CONFIGS), [c.name for c in CONFIGS if not _expected(c)]
    named = {p.stem for p in (CORPUS / "data-cases").glob("*.jsonl")} - {"ocr-only"}
    assert named == set(DATA_CASES), "every malformed dataset has its expectation, and only those"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_bad_config(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config.parent)
    db = tmp_path / "study.db"
    for command in (["validate"], ["launch", "--storage", f"sqlite:///{db}"]):
        _check_rejected([*command, config.name], _expected(config), tmp_path)
        assert not db.exists()
    assert not (config.parent / "runs").exists() and not (config.parent / "vlsweep.db").exists()
    # The YAML tag and the custom model code never ran.
    assert not (config.parent / "owned.txt").exists()
    assert not (CORPUS / "models" / "remote-code" / "RAN").exists()


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_dataset(case: str, tmp_path: Path) -> None:
    split = DATA_CASES[case]["split"]
    data = {"train": str(CORPUS / "data" / "train.jsonl"), "val": str(CORPUS / "data" / "val.jsonl")}
    data[split] = str(CORPUS / "data-cases" / f"{case}.jsonl")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "data": data, "search": {"trials": 2}}))
    db = tmp_path / "study.db"
    for command in (["validate"], ["launch", "--storage", f"sqlite:///{db}"]):
        _check_rejected([*command, str(config)], DATA_CASES[case]["expect"], tmp_path)
    check = runner.invoke(app, ["data", "check", data[split]])
    if split == "train" and case == "task-with-no-samples":
        assert check.exit_code == 0  # a valid file on its own: only the sweep misses a task
    else:
        assert check.exit_code == 2 and "Traceback" not in check.output


@pytest.mark.parametrize("config", ["yaml-python-tag", "remote-code-checkpoint", "missing-train-file"])
def test_the_real_command_prints_only_error_lines(config: str, tmp_path: Path) -> None:
    """The installed entry point (not the test runner): exit 2, stderr only `error:` lines."""
    path = CORPUS / "configs" / f"{config}.yaml"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlsweep.cli",
            "launch",
            path.name,
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
        ],
        cwd=path.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), out.stderr
    assert not (tmp_path / "s.db").exists()
