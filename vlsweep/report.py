"""``vlsweep report``: one self-contained HTML file (plotly.js inlined, opens offline).

The data comes from ``vlsweep.results``; this module only draws it.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
from pathlib import Path
from typing import Any

from vlsweep.errors import UserInputError
from vlsweep.metrics import METRICS, better, legend
from vlsweep.outcomes import fmt
from vlsweep.results import (
    SweepResults,
    carried_rows,
    front_rows,
    hypervolume_history,
    importances,
    lr_against_objectives,
    pareto_points,
    reference_point,
    short,
)

_COLORS = {"front": "#1f77b4", "dominated": "#b0b0b0", "infeasible": "#d62728"}


def _axis_title(name: str, direction: str) -> str:
    metric = METRICS.get(name)
    label = f"{name}: {metric.label}" if metric is not None else name
    return f"{label} ({better(direction)})"


def _short_axis_title(name: str, direction: str) -> str:
    """The metric's name alone, for views with no room for its label (a 3-D scene, a row
    of small plots); the report's legend line under its front table spells each out."""
    return f"{name} ({better(direction)})"


_BASELINE = {"size": 14, "symbol": "diamond-open", "color": "#2ca02c", "line": {"width": 2}}
_STAR = {"size": 20, "symbol": "star", "color": "#ff7f0e", "line": {"width": 1, "color": "black"}}
# How each kind of point is drawn, in drawing order (the front on top).
_KINDS = (
    ("dominated", "dominated", "circle"),
    ("infeasible", "infeasible (violates a constraint)", "x"),
    ("front", "Pareto front", "circle"),
)


def _points(results: SweepResults, picked_number: int | None) -> list[Any]:
    """The full-budget trials as front points, ``picked_number`` marked."""
    picked = next((t for t in results.trials if t.number == picked_number), None)
    return pareto_points(results, picked)


def pareto_figure(results: SweepResults, picked_number: int | None) -> Any:
    """The full-budget trials in objective space: a plane for two objectives, a 3-D scatter
    for three, and every pair of objectives side by side for more."""
    points = _points(results, picked_number)
    n = len(results.metric_names)
    if n == 3:
        fig = _pareto_3d(results, points)
    elif n > 3:
        fig = _pareto_pairs(results, points)
    else:
        fig = _pareto_2d(results, points)
    fig.update_layout(title=f"Pareto front of {results.name!r}: {len(points)} full-budget trials")
    return fig


def _pareto_2d(results: SweepResults, points: list[Any]) -> Any:
    import plotly.graph_objects as go

    x_name, y_name = results.metric_names[0], results.metric_names[1]
    fig = go.Figure()
    for kind, label, symbol in _KINDS:
        pts = [p for p in points if p.kind == kind]
        if kind == "front":
            pts.sort(key=lambda p: p.values[0])
        fig.add_trace(
            go.Scatter(
                x=[p.values[0] for p in pts],
                y=[p.values[1] for p in pts],
                mode="lines+markers" if kind == "front" else "markers",
                line={"shape": "hv", "color": _COLORS[kind], "width": 1},
                marker={"color": _COLORS[kind], "size": 9, "symbol": symbol},
                name=f"{label} ({len(pts)})",
                text=[f"trial {p.number}" for p in pts],
                customdata=[[p.number] for p in pts],
                hovertemplate=f"%{{text}}<br>{x_name}=%{{x:.4g}}<br>{y_name}=%{{y:.4g}}<extra></extra>",
            )
        )
    for p in points:
        if p.baseline:
            fig.add_trace(
                _highlight(p, f"baseline #{p.number}", "baseline (un-tuned defaults)", _BASELINE, "bottom")
            )
        if p.picked:
            fig.add_trace(_highlight(p, f"picked #{p.number}", "picked trial", _STAR, "top"))
    fig.update_layout(
        xaxis_title=_axis_title(x_name, results.directions[0]),
        yaxis_title=_axis_title(y_name, results.directions[1]),
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
        height=520,
    )
    return fig


def _hover(results: SweepResults) -> str:
    return "%{text}" + "".join(
        f"<br>{n}=%{{customdata[{i + 1}]:.4g}}" for i, n in enumerate(results.metric_names)
    )


def _pareto_3d(results: SweepResults, points: list[Any]) -> Any:
    import plotly.graph_objects as go

    names = results.metric_names
    fig = go.Figure()
    for kind, label, symbol in _KINDS:
        pts = [p for p in points if p.kind == kind]
        fig.add_trace(
            go.Scatter3d(
                x=[p.values[0] for p in pts],
                y=[p.values[1] for p in pts],
                z=[p.values[2] for p in pts],
                mode="markers",
                marker={"color": _COLORS[kind], "size": 5, "symbol": "x" if symbol == "x" else "circle"},
                name=f"{label} ({len(pts)})",
                text=[f"trial {p.number}" + (" (baseline)" if p.baseline else "") for p in pts],
                customdata=[[p.number, *p.values] for p in pts],
                hovertemplate=_hover(results) + "<extra></extra>",
            )
        )
    for p, picked in _marks(points):
        fig.add_trace(
            go.Scatter3d(
                x=[p.values[0]],
                y=[p.values[1]],
                z=[p.values[2]],
                mode="markers+text",
                marker={"size": 9, "color": "#ff7f0e" if picked else "#2ca02c", "symbol": "diamond"},
                text=[f"{'picked' if picked else 'baseline'} #{p.number}"],
                textposition="top center" if picked else "bottom center",
                name="picked trial" if picked else "baseline (un-tuned defaults)",
                hoverinfo="skip",
            )
        )
    axes = {
        f"{axis}axis_title": _short_axis_title(names[i], results.directions[i])
        for i, axis in enumerate("xyz")
    }
    fig.update_layout(
        scene=axes,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.05},
        height=640,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    return fig


def _pareto_pairs(results: SweepResults, points: list[Any]) -> Any:
    import itertools

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names, dirs = results.metric_names, results.directions
    pairs = list(itertools.combinations(range(len(names)), 2))
    cols = 3
    rows = -(-len(pairs) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{names[j]} vs {names[i]}" for i, j in pairs])
    for k, (i, j) in enumerate(pairs):
        row, col = k // cols + 1, k % cols + 1
        for kind, label, symbol in _KINDS:
            pts = [p for p in points if p.kind == kind]
            fig.add_trace(
                go.Scatter(
                    x=[p.values[i] for p in pts],
                    y=[p.values[j] for p in pts],
                    mode="markers",
                    marker={"color": _COLORS[kind], "size": 7, "symbol": symbol},
                    name=f"{label} ({len(pts)})",
                    legendgroup=kind,
                    showlegend=k == 0,
                    text=[f"trial {p.number}" for p in pts],
                    customdata=[[p.number, *p.values] for p in pts],
                    hovertemplate=_hover(results) + "<extra></extra>",
                ),
                row=row,
                col=col,
            )
        for p, picked in _marks(points):
            fig.add_trace(
                go.Scatter(
                    x=[p.values[i]],
                    y=[p.values[j]],
                    mode="markers",
                    marker=_STAR if picked else _BASELINE,
                    name="picked trial" if picked else "baseline (un-tuned defaults)",
                    legendgroup="picked" if picked else "baseline",
                    showlegend=k == 0,
                    text=[f"{'picked' if picked else 'baseline'} #{p.number}"],
                    hoverinfo="text",
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text=_short_axis_title(names[i], dirs[i]), row=row, col=col)
        fig.update_yaxes(title_text=_short_axis_title(names[j], dirs[j]), row=row, col=col)
    # The legend at the figure's foot, below the last row's axis titles, whatever the rows.
    fig.update_layout(
        template="plotly_white",
        legend={"orientation": "h", "yref": "container", "y": 0.01, "yanchor": "bottom"},
        margin={"b": 110},
        height=380 * rows + 60,
    )
    return fig


def _marks(points: list[Any]) -> list[tuple[Any, bool]]:
    """(point, is the picked one) for each mark to draw: the baseline, then the picked
    trial on top; a picked baseline gets both."""
    return [(p, False) for p in points if p.baseline] + [(p, True) for p in points if p.picked]


def _highlight(p: Any, text: str, name: str, marker: dict[str, Any], position: str) -> Any:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[p.values[0]],
        y=[p.values[1]],
        mode="markers+text",
        marker=marker,
        text=[text],
        textposition=f"{position} center",
        name=name,
        hoverinfo="skip",
    )


def hypervolume_figure(results: SweepResults) -> Any:
    import plotly.graph_objects as go

    ref = reference_point(results)
    history = hypervolume_history(results, ref)
    fig = go.Figure(
        go.Scatter(
            x=[n for n, _ in history],
            y=[hv for _, hv in history],
            # A marker per trial reads well for a few hundred; beyond that they merge into a band.
            mode="lines+markers" if len(history) <= 500 else "lines",
            line={"shape": "hv"},
            name="hypervolume",
        )
    )
    ref_text = ", ".join(f"{n}={v:.4g}" for n, v in zip(results.metric_names, ref, strict=True))
    fig.update_layout(
        title=f"Hypervolume of the feasible full-budget trials so far (reference point {ref_text})",
        xaxis_title="trial number",
        yaxis_title="hypervolume",
        template="plotly_white",
        height=380,
    )
    return fig


def importance_figure(results: SweepResults) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    imp = importances(results)
    names = list(imp)
    # Parameter names label the bars inside each column; leave room for the longest.
    longest = max((len(k) for v in imp.values() for k in v), default=10)
    fig = make_subplots(
        rows=1,
        cols=len(names),
        subplot_titles=[f"importance for {n}" for n in names],
        # plotly refuses a spacing over 1 / (cols - 1).
        horizontal_spacing=min(0.3, 0.0075 * longest + 0.03, 0.9 / (len(names) - 1))
        if len(names) > 1
        else 0.2,
    )
    for i, name in enumerate(names, start=1):
        items = sorted(imp[name].items(), key=lambda kv: kv[1])
        fig.add_trace(
            go.Bar(
                x=[v for _, v in items], y=[k for k, _ in items], orientation="h", name=name, showlegend=False
            ),
            row=1,
            col=i,
        )
        if not items:
            fig.add_annotation(
                text="too few trials, or the objective never varied",
                xref=f"x{i if i > 1 else ''} domain",
                yref=f"y{i if i > 1 else ''} domain",
                x=0.5,
                y=0.5,
                showarrow=False,
            )
    fig.update_layout(
        title="Parameter importances per objective (Optuna's PED-ANOVA, higher = matters more)",
        template="plotly_white",
        # A row per parameter: a strategies sweep searches 17 and plotly drops the labels
        # of bars it has no room for.
        height=max(380, 140 + 18 * max((len(v) for v in imp.values()), default=0)),
    )
    fig.update_yaxes(tickmode="linear", dtick=1, automargin=True, tickfont={"size": 11})
    return fig


def lr_figure(results: SweepResults) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = lr_against_objectives(results)
    metrics = results.metric_names
    rows = list(data) or ["lr_llm"]
    fig = make_subplots(
        rows=len(metrics),
        cols=len(rows),
        shared_xaxes=False,
        subplot_titles=[f"{m} vs {p}" for m in metrics for p in rows],
    )
    for r, metric in enumerate(metrics, start=1):
        for c, param in enumerate(rows, start=1):
            pts = data.get(param, [])
            fig.add_trace(
                go.Scatter(
                    x=[p["lr"] for p in pts],
                    y=[p[metric] for p in pts],
                    mode="markers",
                    marker={"size": 7, "color": _COLORS["front"]},
                    text=[f"trial {p['trial']}" for p in pts],
                    showlegend=False,
                    hovertemplate=f"%{{text}}<br>{param}=%{{x:.3g}}<br>{metric}=%{{y:.4g}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
            fig.update_xaxes(type="log", title_text=param, row=r, col=c)
            fig.update_yaxes(title_text=metric, row=r, col=c)
    fig.update_layout(
        title="Per-module learning rates against each objective (full-budget trials)",
        template="plotly_white",
        height=300 * len(metrics),
    )
    return fig


def pareto_pairs_figure(results: SweepResults, picked_number: int | None) -> Any:
    """Every pair of objectives side by side: the flat views of a 3-D front, where the
    trade-off between two objectives reads off an axis (and a PNG shows what a rotated
    scene cannot)."""
    points = _points(results, picked_number)
    fig = _pareto_pairs(results, points)
    fig.update_layout(
        title=f"Pareto front of {results.name!r}, objectives in pairs: {len(points)} full-budget trials"
    )
    return fig


def figures(results: SweepResults, picked_number: int | None) -> dict[str, Any]:
    figs = {"pareto": pareto_figure(results, picked_number)}
    if len(results.metric_names) == 3:
        figs["pareto-pairs"] = pareto_pairs_figure(results, picked_number)
    figs |= {
        "hypervolume": hypervolume_figure(results),
        "importance": importance_figure(results),
        "learning-rates": lr_figure(results),
    }
    return figs


def _front_table(results: SweepResults, picked_number: int | None) -> str:
    rows = front_rows(results)
    params = sorted({k for r in rows for k in r["params"]})
    memory = any(r["peak_gpu_memory_gb"] is not None for r in rows)  # trials that ran on a GPU
    names = [*results.metric_names, *(["peak GPU memory, GiB"] if memory else []), *params, "logs"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", *names])
    body = []
    for r in rows:
        mark = " *" if r["dominates_baseline"] else ""
        style = ' class="picked"' if r["trial"] == picked_number else ""
        log = r["log_dir"]
        link = f'<a href="{Path(log).as_uri()}">{html.escape(Path(log).name)}</a>' if log else "-"
        cells = [f"#{r['trial']}{mark}", *(f"{r[m]:.4g}" for m in results.metric_names)]
        cells += [short(r["peak_gpu_memory_gb"])] if memory else []
        cells += [short(r["params"].get(p)) for p in params]
        body.append(
            f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + f"<td>{link}</td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _carried_table(results: SweepResults) -> str:
    """The points carried from a smaller model's study, their metrics there and here."""
    rows = carried_rows(results)
    if not rows:
        return ""
    names = results.metric_names
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ["trial", *(f"{n} ({side})" for n in names for side in ("source", "target")), "source trial"]
    )
    body = []
    for r in rows:
        cells = [f"#{r['trial']}"]
        for n in names:
            target = r["target"][n] if r["target"] else None
            cells += [fmt(r["source"].get(n)), fmt(target) if r["target"] else r["state"].lower()]
        cells.append(f"#{r['source_trial']}{' (knee)' if r['knee'] else ''}")
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<h2>Carried from {html.escape(str(rows[0]['study']))}</h2>"
        "<p>The smaller model's front, re-run here first: each point's metrics on the source "
        "model and on this one.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def render_html(results: SweepResults, picked_number: int | None, figs: dict[str, Any]) -> str:
    from vlsweep import __version__

    # The fronts come first in the page (before their table), the rest after it; plotly.js
    # is inlined once, into the first figure written out.
    order = sorted(figs, key=lambda k: not k.startswith("pareto"))
    parts: dict[str, str] = {}
    for i, key in enumerate(order):
        fig = figs[key]
        parts[key] = (
            f'<section id="{key}">'
            + fig.to_html(
                full_html=False, include_plotlyjs=(i == 0), include_mathjax=False, div_id=f"plot-{key}"
            )
            + "</section>"
        )
    counts: dict[str, int] = {}
    for t in results.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    log_roots = sorted({str(Path(r["log_dir"]).parent) for r in front_rows(results) if r["log_dir"]})
    tb = (
        "<p>Training curves (per-task losses, per-group learning rates, gradient norms) of every trial: "
        + " ".join(f"<code>tensorboard --logdir {html.escape(p)}</code>" for p in log_roots)
        + "</p>"
        if log_roots
        else ""
    )
    picked = f"; picked trial #{picked_number} (star)" if picked_number is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>vlsweep report: {html.escape(results.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
tr.picked td {{ background: #fff3e0; font-weight: bold; }}
code {{ background: #f4f4f4; padding: 1px 4px; }}
</style></head><body>
<h1>Sweep {html.escape(results.name)!s}</h1>
<p>{len(results.trials)} trials ({summary}){picked}. Only full-budget (COMPLETE) trials are
on the front; grey ones are dominated, red crosses violate a constraint.
vlsweep {html.escape(__version__)}.</p>
{"".join(v for k, v in parts.items() if k.startswith("pareto"))}
<h2>Pareto front</h2>
<p>* = dominates the baseline (trial run with the un-tuned default hyperparameters).
{html.escape("; ".join(legend(results.metric_names, results.directions)))}.</p>
{_front_table(results, picked_number)}
{_carried_table(results)}
{tb}
{"".join(v for k, v in parts.items() if not k.startswith("pareto"))}
</body></html>
"""


def find_browser() -> str | None:
    """A Chromium/Chrome for kaleido: $BROWSER_PATH, else one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def png_browser() -> str:
    """The Chromium/Chrome ``--png`` renders with; a clear error when there is none."""
    browser = find_browser()
    if browser is None:
        raise UserInputError(
            "--png needs Chromium or Chrome and found none: install it (Debian/Ubuntu: "
            "apt install chromium) or set BROWSER_PATH to its executable; vlsweep does not download one"
        )
    return browser


def write_png(
    fig: Any,
    path: Path,
    width: int = 1100,
    height: int | None = None,
    browser: str | None = None,
    format: str | None = None,
) -> None:
    """One figure as PNG through kaleido and the system's Chromium (or ``browser``); never
    downloads one."""
    browser = browser or png_browser()
    os.environ["BROWSER_PATH"] = browser
    try:
        fig.write_image(
            str(path), format=format, width=width, height=height or int(fig.layout.height or 500), scale=1
        )
    except Exception as exc:  # kaleido's errors are long; the first line says what broke
        raise UserInputError(
            f"--png: rendering {path.name} with {browser} failed: {str(exc).strip().splitlines()[0]}"
        ) from None


def write_pngs(figs: dict[str, Any], stem: Path, browser: str) -> list[Path]:
    """Every figure as ``STEM-KEY.png``. Each is rendered to a temporary name first and all
    are renamed once every one rendered: a failure leaves no new file and replaces no old one."""
    done: list[tuple[Path, Path]] = []
    try:
        for key, fig in figs.items():
            path = stem.with_name(f"{stem.name}-{key}.png")
            part = path.with_name(f".{path.name}.{os.getpid()}.part")
            done.append((part, path))
            write_png(fig, part, browser=browser, format="png")
    except BaseException:
        for part, _ in done:
            part.unlink(missing_ok=True)
        raise
    for part, path in done:
        part.replace(path)
    return [path for _, path in done]


def write_report(
    results: SweepResults, out: Path, picked_number: int | None, png: bool = False
) -> list[Path]:
    """The HTML report at ``out`` and, with ``png``, each plot beside it. The PNGs come
    first: without a browser, or when one fails to render, nothing is written (a folder
    ``out`` names that did not exist is made only when there is something to write)."""
    figs = figures(results, picked_number)
    browser = png_browser() if png else None
    made = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_pngs(figs, out.with_suffix(""), browser) if browser else []
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                out.parent.rmdir()
        raise
    out.write_text(render_html(results, picked_number, figs), encoding="utf-8")
    return [out, *written]
