"""`vlsweep report`: what it writes, and ``--png`` on a machine without a browser (the
rendering itself, with Chromium, is in tests/test_browser.py)."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from typer.testing import CliRunner

from vlsweep.cli import app

LR = FloatDistribution(1e-5, 1e-2, log=True)


def _finished_study(url: str) -> None:
    study = optuna.create_study(storage=url, directions=["minimize", "maximize"], study_name="s")
    study.set_metric_names(["cer", "iou"])
    for i, point in enumerate([(0.1, 0.5), (0.05, 0.4), (0.2, 0.7)]):
        lr = 10 ** -(2 + i / 5)
        study.add_trial(create_trial(values=list(point), params={"lr_llm": lr}, distributions={"lr_llm": LR}))


def test_report_writes_one_html_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _finished_study(url)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "s", "--storage", url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out}"
    assert "<html" in out.read_text()


def test_png_without_a_browser_is_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _finished_study(url)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-browsers-here"))
    out = tmp_path / "report" / "r.html"
    result = CliRunner().invoke(app, ["report", "s", "--storage", url, "-o", str(out), "--png"])
    assert result.exit_code == 2
    assert "error: --png needs Chromium or Chrome and found none" in result.output
    assert "apt install chromium" in result.output
    assert not (tmp_path / "report").exists(), "nothing is written when the PNGs cannot be"


def test_a_plot_that_fails_to_render_leaves_no_new_file_and_replaces_no_old_one(tmp_path, monkeypatch):
    from vlsweep import report
    from vlsweep.errors import UserInputError

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _finished_study(url)
    out = tmp_path / "r.html"
    old = tmp_path / "r-pareto.png"
    old.write_bytes(b"the last report's plot")
    rendered: list[str] = []

    def render(fig, path, width=1100, height=None, browser=None, format=None):
        if rendered:  # the second plot fails, as kaleido does when the browser dies
            raise UserInputError(f"--png: rendering {path.name} with {browser} failed: it crashed")
        rendered.append(path.name)
        path.write_bytes(b"new plot")

    monkeypatch.setattr(report, "find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(report, "write_png", render)
    result = CliRunner().invoke(app, ["report", "s", "--storage", url, "-o", str(out), "--png"])
    assert result.exit_code == 2 and "failed: it crashed" in result.output
    assert rendered and rendered[0].startswith(".r-pareto.png.")  # rendered under a temporary name
    assert sorted(p.name for p in tmp_path.iterdir() if "sqlite" not in p.name) == ["r-pareto.png"]
    assert old.read_bytes() == b"the last report's plot"
