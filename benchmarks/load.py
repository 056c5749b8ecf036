"""Load: `vlsweep status`, `report` and `export` on a study of 10,000 trials.

The study is made quickly with Optuna's ``create_trial`` (no training): the demo's default
space, two objectives, the user attrs a real sweep records, and the states a long sweep
with early stopping ends with (70% COMPLETE, 25% PRUNED, 5% FAIL with an error). Each
command then runs as a user runs it, a fresh process (`python -m vlsweep.cli ...`), so the
wall time includes Python's start and the imports. Target: each under 10 s on a 2-core
machine, in SQLite and in PostgreSQL.

    python benchmarks/load.py [--trials 10000] [--storages sqlite,postgresql] [--pg-url URL]
        [--json docs/benchmarks/load.json]

``--json`` writes the figures docs/benchmarks.md renders (``doc_table``, through
benchmarks/doc_tables.py).

PostgreSQL: --pg-url, else $VLSWEEP_TEST_PG_URL (``eval "$(bash .ci/postgres.sh)"`` starts
a throwaway server); the password comes from PGPASSWORD.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

TARGET_SECONDS = 10.0


def make_study(url: str, name: str, n: int, seed: int = 0) -> float:
    """A study of ``n`` finished trials; returns the seconds it took to write."""
    import numpy as np
    import optuna
    import yaml

    from vlsweep import __version__
    from vlsweep.params import BASELINE
    from vlsweep.search.config import distributions, load_sweep_config, sanitized_config
    from vlsweep.storages import open_storage

    demo = Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml"
    raw = yaml.safe_load(demo.read_text())
    raw.update(name=name)
    raw["search"]["trials"] = n
    cfg, base_dir = load_sweep_config(demo, raw)
    dists = distributions(cfg.search_space)
    rng = np.random.default_rng(seed)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    study = optuna.create_study(
        study_name=name, storage=open_storage(url), directions=["minimize", "maximize"], sampler=sampler
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["cer", "iou"])
    study.set_user_attr("config", sanitized_config(cfg, base_dir))
    study.set_user_attr("vlsweep_version", __version__)
    trials = []
    for i in range(n):
        params = {k: v for k, v in BASELINE.items() if k in dists} if i == 0 else {}
        for k, d in dists.items():
            if k in params:
                continue
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[k] = d.choices[rng.integers(len(d.choices))]
            elif isinstance(d, optuna.distributions.IntDistribution):
                params[k] = int(rng.integers(d.low, d.high + 1))
            elif d.log:
                params[k] = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
            else:
                params[k] = float(rng.uniform(d.low, d.high))
        u = rng.random()
        attrs = {
            "ray_trial_id": f"{i:08x}",
            "train_seconds": float(rng.uniform(60, 600)),
            "eval_seconds": float(rng.uniform(5, 30)),
            "node_id": "a" * 56,
            "worker_pid": 1000 + i % 64,
            "log_dir": f"/runs/{name}/ray/{name}-1/trial-{i:04d}-{i:08x}",
        }
        if i == 0:
            attrs["baseline"] = True
        if u < 0.70 or i == 0:
            cer = float(rng.uniform(0.02, 0.6))
            iou = float(np.clip(0.9 - cer + rng.normal(0, 0.1), 0, 1))
            state, values = optuna.trial.TrialState.COMPLETE, [cer, iou]
            attrs.update(steps=200, parse_fail_rate=float(rng.uniform(0, 0.2)))
            losses = rng.uniform(0.1, 2, size=2)
            attrs.update(val_loss_ocr=float(losses[0]), val_loss_grounding=float(losses[1]))
        elif u < 0.95:
            state, values = optuna.trial.TrialState.PRUNED, None
            attrs.update(steps=int(rng.choice([22, 66])))
        else:
            state, values = optuna.trial.TrialState.FAIL, None
            attrs.update(error="FloatingPointError: training loss is nan at step 37", steps=37)
        trials.append(
            optuna.trial.create_trial(
                params=params, distributions=dists, values=values, state=state, user_attrs=attrs
            )
        )
    study.add_trials(trials)
    return time.perf_counter() - t0


def timed(args: list[str], url: str, cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", *args, "--storage", url],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"vlsweep {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def fresh_pg(url: str) -> str:
    import sqlalchemy

    name = f"load_{os.getpid()}_{int(time.time())}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--storages", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("VLSWEEP_TEST_PG_URL"))
    ap.add_argument("--quick", action="store_true", help="500 trials (CI smoke run; not the figures)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (the docs' table)")
    args = ap.parse_args()
    if args.quick:
        args.trials = 500
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in args.storages.split(","):
            if kind == "sqlite":
                url = f"sqlite:///{tmp / 'load.db'}"
            elif kind == "postgresql":
                if not args.pg_url:
                    raise SystemExit('no PostgreSQL: --pg-url, or eval "$(bash .ci/postgres.sh)"')
                url = fresh_pg(args.pg_url)
            else:
                raise SystemExit(f"--storages: unknown {kind!r} (sqlite, postgresql)")
            made = make_study(url, "load", args.trials)
            status_s, out = timed(["status", "load"], url, tmp)
            assert f"{args.trials}/{args.trials} trials done" in out, out[:500]
            report_s, _ = timed(["report", "load", "-o", str(tmp / f"{kind}.html")], url, tmp)
            export_s, _ = timed(["export", "load", "-o", str(tmp / f"export-{kind}")], url, tmp)
            size = (tmp / f"{kind}.html").stat().st_size / 1e6
            rows.append((kind, made, status_s, report_s, export_s, size))
            print(
                f"{kind}: {args.trials} trials written in {made:.1f} s; status {status_s:.2f} s, "
                f"report {report_s:.2f} s ({size:.1f} MB), export {export_s:.2f} s",
                flush=True,
            )
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "trials": args.trials,
        "target_s": TARGET_SECONDS,
        "rows": [
            {
                "storage": kind,
                "write_s": made,
                "status_s": st,
                "report_s": rep,
                "report_mb": mb,
                "export_s": ex,
            }
            for kind, made, st, rep, ex, mb in rows
        ],
    }
    print("\n" + doc_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


STORAGES = {"sqlite": "SQLite (WAL)", "postgresql": "PostgreSQL (local)"}


def doc_table(summary: dict) -> str:
    """The docs' table: each command's wall time, in bold where it meets the target."""

    def cell(seconds: float) -> str:
        text = f"{seconds:.2f} s"
        return f"**{text}**" if seconds < summary["target_s"] else text

    run = f"run ({summary['date']}), {summary['trials']:,} trials"
    head = f"| {run} | write the study | `status load` | `report load` | `export load` |"
    lines = [head, "|---|---|---|---|---|"]
    for r in summary["rows"]:
        report = f"{cell(r['report_s'])} ({r['report_mb']:.1f} MB HTML)"
        lines.append(
            f"| {STORAGES.get(r['storage'], r['storage'])} | {r['write_s']:.1f} s | {cell(r['status_s'])} "
            f"| {report} | {cell(r['export_s'])} |"
        )
    slow = [
        r["storage"]
        for r in summary["rows"]
        for k in ("status_s", "report_s", "export_s")
        if r[k] >= summary["target_s"]
    ]
    lines.append("")
    lines.append(
        f"Target: each command under {summary['target_s']:g} s: "
        + ("met." if not slow else f"NOT met ({', '.join(slow)}).")
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
