"""``vlsweep status``: trial counts by state and the Pareto front as a plain-text table,
rendered from ``vlsweep.results`` (the front, the baseline and dominance are computed
there, once)."""

from __future__ import annotations

import optuna

from vlsweep import metrics, outcomes, storages
from vlsweep.results import SweepResults, carried_rows, front_rows, short


def front_table(results: SweepResults) -> str:
    rows_data, baseline, names = front_rows(results), results.baseline, results.metric_names
    if not rows_data:
        return f"study {results.name!r}: no COMPLETE trial yet"
    params = sorted({k for r in rows_data for k in r["params"]})
    # Peak GPU memory, where the trials ran on a GPU (a CPU sweep has none to show).
    memory = any(r["peak_gpu_memory_gb"] is not None for r in rows_data)
    # Train workers, where a trial ran on several (resources.train_workers).
    workers = any((r["world_size"] or 1) > 1 for r in rows_data)
    header = [
        "trial",
        *names,
        *(["gpu_mem_gb"] if memory else []),
        *(["workers"] if workers else []),
        *params,
    ]
    rows = [
        [
            f"#{r['trial']}{'*' if r['dominates_baseline'] else ''}",
            *(outcomes.fmt(r[n]) for n in names),
            *([short(r["peak_gpu_memory_gb"])] if memory else []),
            *([str(r["world_size"] or 1)] if workers else []),
            *(short(r["params"].get(p)) for p in params),
        ]
        for r in rows_data
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Pareto front of {results.name!r} ({len(rows)} of {len(results.complete)} complete trials):"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if baseline is not None:
        lines.append(
            f"baseline #{baseline.number}: "
            + " ".join(f"{n}={outcomes.fmt(v)}" for n, v in zip(names, baseline.values, strict=True))
            + "  (* = dominates the baseline)"
        )
    legend = metrics.legend(names, results.directions)
    if memory:
        legend.append("gpu_mem_gb: the trial's peak GPU memory, GiB")
    if workers:
        legend.append("workers: the trial's train workers (its ranks' places: user attr rank_placement)")
    if legend:
        lines.append("; ".join(legend))
    return "\n".join(lines)


def carried_table(results: SweepResults) -> str:
    """The points carried from a smaller model's study: each one's metrics there and here."""
    rows = carried_rows(results)
    if not rows:
        return ""
    names = results.metric_names
    header = ["trial", *(f"{n} {side}" for n in names for side in ("source", "target")), "source trial"]
    table = []
    for r in rows:
        target = r["target"] or {}
        cells = [f"#{r['trial']}"]
        for n in names:
            cells += [
                outcomes.fmt(r["source"].get(n)),
                outcomes.fmt(target.get(n)) if r["target"] else r["state"].lower(),
            ]
        cells.append(f"#{r['source_trial']}{' (knee)' if r['knee'] else ''}")
        table.append(cells)
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    lines = [f"carried from study {rows[0]['study']!r} (its front, re-run on this model):"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def reruns_line(trials: list[optuna.trial.FrozenTrial]) -> str:
    """The trials Ray ran again after a worker death or a node loss (the failure classes of
    docs/sweep.md, "When things break"), with how many times each and from which step."""
    parts = []
    for t in trials:
        counts = [
            (t.user_attrs.get(attr) or 0, kind)
            for kind, attr in (("worker death", "worker_restarts"), ("node loss", "node_losses"))
        ]
        said = ", ".join(f"{kind} x{n}" for n, kind in counts if n)
        if said:
            step = t.user_attrs.get("resumed_from_step")
            parts.append(f"#{t.number} {said}" + (f" (resumed from step {step})" if step else ""))
    if not parts:
        return ""
    return f"run again after a failure ({len(parts)} trial{'s' if len(parts) != 1 else ''}): " + "; ".join(
        parts
    )


def status_text(name: str | None, storage: str | None) -> str:
    url = storages.storage_url(storage)
    if name is None:
        summaries = optuna.get_all_study_summaries(storages.open_storage(url))
        if not summaries:
            return f"no studies in {storages.masked(url)}"
        return "\n".join(f"{s.study_name}: {s.n_trials} trials" for s in summaries)
    study = storages.load_existing(url, name)
    results = SweepResults.of(study)
    trials = results.trials
    c = outcomes.counts(trials)
    head = ", ".join(f"{c[k]} {k.lower()}" for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))
    cfg = results.config
    n_trials = (cfg.get("search") or {}).get("trials")
    done = outcomes.finished_toward_trials(trials)
    progress = f"{done}/{n_trials} trials done" if n_trials else f"{done} trials done"
    driver = study.user_attrs.get("driver")
    running = f"; driver pid {driver['pid']} on {driver['host']}" if driver else ""
    carried = carried_table(results)
    reruns = reruns_line(trials)
    return (
        f"study {name!r} in {storages.masked(url)}: {progress} ({head}){running}\n{front_table(results)}"
        + (f"\n{carried}" if carried else "")
        + (f"\n{reruns}" if reruns else "")
    )
