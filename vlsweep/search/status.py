"""``vlsweep status``: trial counts by state and the Pareto front as a plain-text table."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vlsweep.search import study as studies


def front_table(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> str:
    names = study.metric_names or [f"value{i}" for i in range(len(study.directions))]
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    front = studies.pareto_front(study, trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    dirs = [d.name.lower() for d in study.directions]
    if not front:
        return f"study {study.study_name!r}: no COMPLETE trial yet"
    params = sorted({k for t in front for k in t.params})
    header = ["trial", *names, *params]
    rows = []
    for t in front:
        mark = (
            ""
            if baseline is None or t.number == baseline.number
            else ("*" if studies.dominates(t, baseline, dirs) else "")
        )
        rows.append(
            [
                f"#{t.number}{mark}",
                *(studies.fmt(v) for v in t.values),
                *(_short(t.params.get(p)) for p in params),
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Pareto front of {study.study_name!r} ({len(front)} of {len(complete)} complete trials):"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if baseline is not None:
        lines.append(
            f"baseline #{baseline.number}: "
            + " ".join(f"{n}={studies.fmt(v)}" for n, v in zip(names, baseline.values, strict=True))
            + "  (* = dominates the baseline)"
        )
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def status_text(name: str | None, storage: str | None) -> str:
    url = studies.storage_url(storage)
    if name is None:
        summaries = optuna.get_all_study_summaries(studies.open_storage(url))
        if not summaries:
            return f"no studies in {studies.masked(url)}"
        return "\n".join(f"{s.study_name}: {s.n_trials} trials" for s in summaries)
    study = studies.load_existing(url, name)
    trials = study.get_trials(deepcopy=False)
    c = studies.counts(trials)
    head = ", ".join(f"{c[k]} {k.lower()}" for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))
    cfg = study.user_attrs.get("config") or {}
    budget = (cfg.get("search") or {}).get("trials")
    done = studies.finished_toward_budget(trials)
    progress = f"{done}/{budget} trials done" if budget else f"{done} trials done"
    driver = study.user_attrs.get("driver")
    running = f"; driver pid {driver['pid']} on {driver['host']}" if driver else ""
    return (
        f"study {name!r} in {studies.masked(url)}: {progress} ({head}){running}\n{front_table(study, trials)}"
    )
