"""What the sweep driver's own storage layer (``DriverStorage``) buys: SQL statements per
trial and wall time, with it and with Optuna's own ``RDBStorage`` (what every reader of a
study opens), each behind Optuna's cache as the sweep opens it.

``DriverStorage`` serves the driver's running trials from memory and writes a trial's
parameters in one transaction, through private Optuna methods. It stays only if it saves
at least 1% of a sweep's wall time. Two sweeps, each run with either storage, the two
alternating order round by round (ABBA...), at least 3 rounds:

- ``demo``: the README's demo (``vlsweep launch``, its 16 trials of 200 steps on the
  builtin tiny Qwen2-VL, SQLite), each launch a process of its own as a user runs it;
- ``trivial``: ``--trials`` (1,000) trials of ``--trial-seconds`` (0.5 s, sleeping, two at
  a time on a local Ray with 2 CPUs, TPE) through the real sweep machinery against a
  PostgreSQL database (a new one per run), as ``trial_overhead.py`` runs them.

Statements are counted in the driver's process with SQLAlchemy's ``before_cursor_execute``
event (every engine, every statement; a count, not a timing, so without noise but for
the heartbeat and progress reads, which follow the clock).

    python benchmarks/storage_cost.py demo [--rounds 3] [--json docs/benchmarks/storage_cost.json]
    python benchmarks/storage_cost.py trivial --storage postgresql+psycopg2://USER@HOST/DB \\
        [--trials 1000] [--trial-seconds 0.5] [--rounds 3] [--json docs/benchmarks/storage_cost.json]

``--json`` merges this sweep's figures into the file under ``demo`` or ``trivial``.
``--storage`` defaults to ``$VLSWEEP_TEST_PG_URL`` (``eval "$(bash .ci/postgres.sh)"``
starts a throwaway server and sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"driver": "DriverStorage (the driver's running trials in memory)", "plain": "Optuna's RDBStorage"}


def count_statements() -> dict[str, int]:
    """Count every SQL statement any engine of this process sends from now on."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts = {"statements": 0}

    @event.listens_for(Engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        counts["statements"] += 1

    return counts


def use_storage(arm: str) -> None:
    """Make the sweep driver open ``arm``'s storage behind Optuna's cache (``plain``:
    Optuna's own, which it opens when Optuna's internals have changed)."""
    import optuna

    from vlsweep.search import driver_storage

    if arm == "plain":
        driver_storage.kind = lambda _log: optuna.storages.RDBStorage  # type: ignore[assignment]
    else:
        driver_storage.kind = lambda _log: driver_storage.DriverStorage  # type: ignore[assignment]


# -- the demo, launched as a user launches it -----------------------------------------------

# Run in a process of its own: the arm's storage, the counter, then `vlsweep launch`; the
# counts and the front are written to $STORAGE_COST_OUT when the CLI exits.
_LAUNCH = """
import atexit, json, os, sys
sys.path.insert(0, {bench!r})
import storage_cost
storage_cost.use_storage({arm!r})
counts = storage_cost.count_statements()
atexit.register(lambda: open(os.environ["STORAGE_COST_OUT"], "w").write(json.dumps(counts)))
from vlsweep.cli import app
app(["launch", *sys.argv[1:]], standalone_mode=True)
"""


def demo_run(arm: str, work: Path, env: dict[str, str], config: Path | None = None) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"{arm}-"))
    out = run_dir / "counts.json"
    code = _LAUNCH.format(bench=str(Path(__file__).parent), arm=arm)
    argv = [sys.executable, "-c", code, *([str(config)] if config else [])]
    t0 = time.perf_counter()
    subprocess.run(
        argv, cwd=run_dir, env={**env, "STORAGE_COST_OUT": str(out)}, check=True, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    import optuna

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{run_dir / 'vlsweep.db'}")
    trials = study.get_trials(deepcopy=False)
    counts = json.loads(out.read_text())
    return {
        "wall_s": round(wall, 2),
        "trials": len(trials),
        "statements": counts["statements"],
        "statements_per_trial": round(counts["statements"] / len(trials), 1),
        "front": sorted(t.number for t in study.best_trials),
        "values": {t.number: t.values for t in trials},
    }


def demo(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vlsweep-storage-cost-"))
    env = {**os.environ, "VLSWEEP_CACHE": str(work / "cache")}
    env.pop("VLSWEEP_STORAGE", None)  # each launch's study is the vlsweep.db of its own directory
    # Warm-up, not counted: the first launch writes the demo data into the cache.
    warm = work / "warm.yaml"
    text = (ROOT / "examples" / "demo-sweep.yaml").read_text()
    warm.write_text(text.replace("trials: 16", "trials: 2"))
    demo_run("driver", work, env, warm)
    return rounds(args.rounds, lambda arm, _r: demo_run(arm, work, env))


# -- 1,000 short trials against PostgreSQL ----------------------------------------------------


def trivial_run(
    arm: str, r: int, args: argparse.Namespace, tmp: Path, counts: dict[str, int]
) -> dict[str, Any]:
    import load
    import trial_overhead
    from ray import tune

    from vlsweep.search import sweep

    name = f"storage_cost_{arm}_{r}"
    url = load.fresh_pg(args.storage)  # a database of its own per run
    cfg = trial_overhead.sweep_config(tmp, name, args.trials)
    timeline = tmp / "timeline.jsonl"
    trainable = tune.with_parameters(
        trial_overhead.trivial_trial, seconds=args.trial_seconds, timeline=str(timeline)
    )
    use_storage(arm)
    before = counts["statements"]
    out: dict[str, Any] = {}
    res = trial_overhead.timed(
        lambda: out.setdefault(
            "study", sweep.run_sweep(cfg, tmp, url, trainable=trainable, log=lambda _: None)
        ),
        timeline,
    )
    statements = counts["statements"] - before
    trials = out["study"].get_trials(deepcopy=False)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    if complete != args.trials:
        raise SystemExit(f"error: {name}: {complete} of {args.trials} trials COMPLETE")
    return {
        "wall_s": round(res["wall"], 2),
        "loop_s": round(res["loop"], 2),
        "trials": len(trials),
        "statements": statements,
        "statements_per_trial": round(statements / len(trials), 1),
    }


def trivial(args: argparse.Namespace) -> dict[str, Any]:
    import optuna
    import ray

    from vlsweep.search.backend import local_ray

    if not args.storage:
        raise SystemExit('error: --storage: give a PostgreSQL URL, or eval "$(bash .ci/postgres.sh)" first')
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The trivial trainable lives in trial_overhead.py, which Ray's workers cannot import.
    import trial_overhead

    ray.cloudpickle.register_pickle_by_value(trial_overhead)
    tmp = Path(tempfile.mkdtemp(prefix="vlsweep-storage-cost-"))
    counts = count_statements()
    with local_ray(num_cpus=2):
        return rounds(args.rounds, lambda arm, r: trivial_run(arm, r, args, tmp, counts))


# -- both ----------------------------------------------------------------------------------------


def rounds(n: int, run: Any) -> dict[str, Any]:
    """``n`` rounds of both arms, alternating which goes first; the medians and each run."""
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(n):
        for arm in list(ARMS) if r % 2 == 0 else list(reversed(ARMS)):
            res = run(arm, r)
            runs[arm].append(res)
            print(
                f"round {r} {arm:6s}: {res['wall_s']:7.1f} s, {res['statements_per_trial']:6.1f} statements "
                f"per trial ({res['trials']} trials)",
                flush=True,
            )
    summary: dict[str, Any] = {"rounds": n, "arms": ARMS}
    for arm, rs in runs.items():
        summary[arm] = {
            "wall_s": round(statistics.median(x["wall_s"] for x in rs), 2),
            "statements_per_trial": round(statistics.median(x["statements_per_trial"] for x in rs), 1),
            "runs": rs,
        }
    saved = 1 - summary["driver"]["wall_s"] / summary["plain"]["wall_s"]
    summary["saving"] = round(saved, 4)
    # Paired by round: each round's two runs sat side by side.
    summary["saving_per_round"] = [
        round(1 - d["wall_s"] / p["wall_s"], 4) for d, p in zip(runs["driver"], runs["plain"], strict=True)
    ]
    print(
        f"median wall: DriverStorage {summary['driver']['wall_s']:.1f} s, RDBStorage "
        f"{summary['plain']['wall_s']:.1f} s: saves {saved:.2%} (per round {summary['saving_per_round']}); "
        f"statements per trial {summary['driver']['statements_per_trial']} vs "
        f"{summary['plain']['statements_per_trial']}"
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", choices=["demo", "trivial"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=1000, help="trivial: trials per sweep")
    ap.add_argument("--trial-seconds", type=float, default=0.5, help="trivial: each trial's sleep")
    ap.add_argument(
        "--storage", default=os.environ.get("VLSWEEP_TEST_PG_URL"), help="trivial: PostgreSQL URL"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    summary = demo(args) if args.sweep == "demo" else trivial(args)
    summary["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    summary["cores"] = os.cpu_count()
    if args.sweep == "trivial":
        summary.update(trials=args.trials, trial_seconds=args.trial_seconds, database="PostgreSQL")
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else {}
        data[args.sweep] = summary
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


def doc_table(data: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py): both sweeps, both storages."""
    lines = [
        "| sweep | storage | statements per trial | median wall time | per round | DriverStorage saves |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "demo": lambda s: f"the demo (16 trials of 200 steps, 2 at a time, SQLite), {s['rounds']} rounds",
        "trivial": lambda s: (
            f"{s['trials']:,} trials of {s['trial_seconds']:g} s ({s['database']}), {s['rounds']} rounds"
        ),
    }
    for sweep, label in labels.items():
        if sweep not in data:
            continue
        s = data[sweep]
        for arm in ARMS:
            walls = ", ".join(f"{r['wall_s']:.0f} s" for r in s[arm]["runs"])
            saved = (
                f"**{s['saving']:.2%}** (per round: {', '.join(f'{x:.2%}' for x in s['saving_per_round'])})"
                if arm == "driver"
                else ""
            )
            sweep_label = label(s) if arm == "driver" else ""
            lines.append(
                f"| {sweep_label} | {ARMS[arm]} | {s[arm]['statements_per_trial']:.1f} "
                f"| {s[arm]['wall_s']:.1f} s | {walls} | {saved} |"
            )
    if "demo" in data:  # reproducible: true, so the storage must not change what is found
        runs = [r for arm in ARMS for r in data["demo"][arm]["runs"]]
        same = all(r["values"] == runs[0]["values"] and r["front"] == runs[0]["front"] for r in runs)
        front = ", ".join(f"#{n}" for n in runs[0]["front"])
        lines.append(
            f"\nThe {len(runs)} demo runs, either storage: "
            + (
                f"the same values for every trial and the same front ({front})."
                if same
                else "**the trials' values differ between runs**."
            )
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
