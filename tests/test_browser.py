"""The pages users look at, in a real browser: Playwright driving Debian's Chromium.

A real sweep (local Ray, tiny model) makes the study; `vlsweep dashboard` serves it and
`vlsweep report` writes the HTML. `.ci/run` installs chromium; Playwright never
downloads a browser here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.support.helpers import train_config, wait_for_http

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _vlsweep(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", *args], cwd=cwd, capture_output=True, text=True, **kw
    )


def _launched(d: Path, cfg: dict) -> tuple[Path, str, str]:
    """``cfg`` written to ``d`` and run to the end by `vlsweep launch`: (directory, storage
    URL, study name)."""
    if CHROMIUM is None:
        pytest.fail("no Chromium: apt install chromium (.ci/run does), or set BROWSER_PATH")
    (d / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    url = f"sqlite:///{d / 'vlsweep.db'}"
    out = _vlsweep("launch", "sweep.yaml", "--storage", url, cwd=d, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return d, url, cfg["name"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_checkpoint, demo_data):
    """A sweep that `vlsweep launch` ran to the end: (directory, storage URL, study name)."""
    cfg = train_config(
        tiny_checkpoint("qwen2_vl"), demo_data, budget={"steps": 4, "batch_size": 4, "max_new_tokens": 8}
    )
    cfg.update(name="demo", search={"trials": 5, "max_concurrent": 2})
    return _launched(tmp_path_factory.mktemp("sweep"), cfg)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _dashboard(d: Path, url: str):
    """`vlsweep dashboard` on the study, answering; yields its port."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vlsweep.cli", "dashboard", "--storage", url, "--port", str(port)],
        cwd=d,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies", server)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _study_page(browser, port: int, study: optuna.Study):
    """The dashboard's page of ``study``, once its Pareto-front plot has points."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}")
    page.wait_for_function(
        "() => { const g = document.querySelector('#graph-pareto-front');"
        " return g && g.data && g.data.some(t => (t.x || []).length > 0); }",
        timeout=30_000,
    )
    return page


def _report_page(browser, sweep: tuple[Path, str, str], ready: str):
    """`vlsweep report` of the sweep opened from its file in an offline browser, once the
    JS predicate ``ready`` holds: (page, page errors, requested URLs)."""
    d, url, name = sweep
    out = _vlsweep("report", name, "--storage", url, "-o", "report.html", cwd=d, timeout=120)
    assert out.returncode == 0, out.stderr
    context = browser.new_context(offline=True, viewport={"width": 1300, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((d / "report.html").as_uri())
    page.wait_for_function(ready, timeout=30_000)
    return page, errors, requests


def test_dashboard_shows_the_pareto_front_with_cer_and_iou(finished_sweep, browser):
    d, url, name = finished_sweep
    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    with _dashboard(d, url) as port:
        page = _study_page(browser, port, study)
        shown = page.evaluate(
            "() => document.querySelector('#graph-pareto-front').data"
            ".reduce((n, t) => n + (t.x || []).length, 0)"
        )
        assert shown == len(complete) and shown >= 3
        # The objective pickers beside the plot name the axes by the study's metric names.
        for label, metric in (("Objective X", "cer"), ("Objective Y", "iou")):
            select = page.get_by_text(label, exact=False).locator("xpath=following::*[@role='combobox'][1]")
            assert select.inner_text().strip() == metric
        assert page.locator("svg.main-svg").count() > 0  # plotly drew it
        page.screenshot(path=str(d / "dashboard.png"), full_page=True)


def test_report_renders_offline_from_file(finished_sweep, browser):
    d = finished_sweep[0]
    page, errors, requests = _report_page(
        browser, finished_sweep, "() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4"
    )
    axes = page.evaluate(
        "() => { const g = document.getElementById('plot-pareto');"
        " return [g.layout.xaxis.title.text, g.layout.yaxis.title.text, g.data.map(t => t.name)]; }"
    )
    assert axes[0].startswith("cer") and axes[1].startswith("iou")
    assert any(n.startswith("Pareto front") for n in axes[2])
    for plot in ("plot-pareto", "plot-hypervolume", "plot-importance", "plot-learning-rates"):
        n = page.evaluate(f"() => document.getElementById('{plot}').data.length")
        assert n >= 1, plot
    assert not errors, errors
    assert all(r.startswith(("file:", "data:", "blob:")) for r in requests), requests
    page.screenshot(path=str(d / "report.png"), full_page=True)
    page.context.close()


@pytest.mark.parametrize(
    "sweep, fronts", [("finished_sweep", ["pareto"]), ("three_objective_sweep", ["pareto", "pareto-pairs"])]
)
def test_report_png_through_kaleido_and_the_system_chromium(sweep, fronts, request):
    d, url, name = request.getfixturevalue(sweep)
    out = _vlsweep("report", name, "--storage", url, "-o", "png/r.html", "--png", cwd=d, timeout=180)
    assert out.returncode == 0, out.stderr
    pngs = sorted(p.name for p in (d / "png").glob("*.png"))
    assert pngs == sorted(f"r-{k}.png" for k in [*fronts, "hypervolume", "importance", "learning-rates"])
    for p in (d / "png").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_dashboard_offers_each_trials_stored_files(finished_sweep, browser):
    """The files a trial stored (adapter, metrics, predictions, training log) are in the
    dashboard's artifact panel of that trial, and its download is the file itself."""
    import urllib.request

    from vlsweep import artifacts

    d, url, name = finished_sweep
    study = optuna.load_study(study_name=name, storage=url)
    trial = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE)
    files = artifacts.trial_files(trial, artifacts.removed_ids(study))
    assert set(files) == {n for _, n in artifacts.TRIAL_FILES}
    with _dashboard(d, url) as port:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(
            f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials?numbers={trial.number}"
        )
        for filename in files:
            page.get_by_text(filename, exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(d / "dashboard-artifacts.png"), full_page=True)
        meta = files["metrics.json"]
        link = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{trial._trial_id}/{meta.artifact_id}"
        with urllib.request.urlopen(link, timeout=10) as resp:
            assert json.loads(resp.read())["cer"] == pytest.approx(trial.values[0])


@pytest.fixture(scope="module")
def three_objective_sweep(tmp_path_factory, tiny_checkpoint, demo_data):
    """A launched sweep with forgetting as a third objective: (directory, storage URL, name)."""
    cfg = train_config(
        tiny_checkpoint("qwen2_vl"), demo_data, budget={"steps": 4, "batch_size": 4, "max_new_tokens": 8}
    )
    cfg["data"]["retain"] = str(demo_data / "retain.jsonl")
    cfg.update(
        name="three",
        objectives=["cer", "iou", "forgetting"],
        strategies={"loss_balance": True},
        search={"trials": 4, "max_concurrent": 2},
    )
    return _launched(tmp_path_factory.mktemp("sweep3"), cfg)


def test_dashboard_plots_any_two_of_three_objectives(three_objective_sweep, browser):
    """optuna-dashboard draws a front in two objectives at a time: with three, its pickers
    offer all three by name, and choosing forgetting for Y plots the trials' forgetting."""
    from playwright.sync_api import expect

    d, url, name = three_objective_sweep
    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert study.metric_names == ["cer", "iou", "forgetting"] and len(complete) >= 3
    plotted = (
        "() => document.querySelector('#graph-pareto-front').data"
        ".flatMap(t => (t.x || []).map((x, i) => [x, t.y[i]]))"
    )
    with _dashboard(d, url) as port:
        page = _study_page(browser, port, study)
        y_picker = page.get_by_text("Objective Y", exact=False).locator(
            "xpath=following::*[@role='combobox'][1]"
        )
        assert y_picker.inner_text().strip() == "iou"
        y_picker.click()
        options = page.get_by_role("option")
        expect(options).to_have_text(["cer", "iou", "forgetting"])
        options.filter(has_text="forgetting").click()
        page.wait_for_function(
            f"() => {{ const p = ({plotted})(); return p.length > 0 && "
            f"p.every(([x, y]) => {json.dumps([t.values[2] for t in complete])}.includes(y)); }}",
            timeout=30_000,
        )
        points = sorted(map(tuple, page.evaluate(plotted)))
        assert points == sorted((t.values[0], t.values[2]) for t in complete)
        page.screenshot(path=str(d / "dashboard-3.png"), full_page=True)


def test_report_draws_three_objectives_as_a_scene_and_its_projections(three_objective_sweep, browser):
    d = three_objective_sweep[0]
    page, errors, requests = _report_page(
        browser,
        three_objective_sweep,
        "() => document.querySelector('#plot-pareto .gl-container canvas')"
        " && document.querySelector('#plot-pareto-pairs .main-svg')",
    )
    scene = page.evaluate(
        "() => { const s = document.getElementById('plot-pareto').layout.scene;"
        " return [s.xaxis.title.text, s.yaxis.title.text, s.zaxis.title.text]; }"
    )
    assert [t.split()[0] for t in scene] == ["cer", "iou", "forgetting"]
    titles = page.evaluate(
        "() => document.getElementById('plot-pareto-pairs').layout.annotations.map(a => a.text)"
    )
    assert titles == ["iou vs cer", "forgetting vs cer", "forgetting vs iou"]
    assert page.locator("#plot-pareto-pairs .main-svg").count() > 0 and not errors, errors
    assert all(r.startswith(("file:", "data:", "blob:")) for r in requests), requests
    page.screenshot(path=str(d / "report-3.png"), full_page=True)
    page.context.close()
