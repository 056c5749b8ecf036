"""Per-trial overhead of a sweep: trivial 1-second trials through the real sweep machinery.

Everything but the training is real: the Optuna study in SQLite, our ask/tell searcher
with the default TPE sampler, the driver callback (heartbeat, progress), Ray Tune on a
local Ray with 2 CPUs running 2 trials at a time. Each trial sleeps ``--trial-seconds``
in four evaluation slices and reports cer/iou/steps like the engine does, and writes when
it started and ended to a timeline file.

Three set-ups run side by side, alternating order per round:

- ``vlsweep``: ``run_sweep`` with ``reuse_actors: true`` (the default);
- ``vlsweep, no reuse``: the same with ``reuse_actors: false`` (a new actor per trial);
- ``ray tune``: bare Ray Tune, random search from ``param_space``, no study: the floor.

Figures, against the ideal ``ceil(trials / 2) * trial_seconds``:

- start-up: from the call to the first trial starting (study, Ray actor start; once);
- per-trial overhead: (last trial end - first trial start) / ideal - 1, the loop's own cost
  per trial (target: under 5% with reuse_actors, and within 2 points of bare Ray Tune);
- all-in: the whole call / ideal.

Ray itself is started once before all runs.

    python benchmarks/trial_overhead.py [--trials 40] [--rounds 2] [--trial-seconds 1.0]
        [--json docs/benchmarks/trial_overhead.json]

``--json`` writes the medians as ``{"vlsweep": {"per_trial_overhead": FRACTION, ...},
"bare_ray": {...}, "vlsweep_no_reuse": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def trivial_trial(config: dict[str, Any], seconds: float = 1.0, steps: int = 200, timeline: str = "") -> None:
    """A stand-in for one fine-tune: four evaluations over ``seconds``, metrics from params."""
    from ray import tune

    started = time.time()
    p = config["params"]
    lr = p.get("lr_llm", 1e-4)
    for k in range(1, 5):
        time.sleep(seconds / 4)
        cer = min(1.0, abs(math.log10(lr) + 4.0) / 3 + 1.0 / k)
        iou = max(0.0, 1.0 - cer) * p.get("weight_ocr", 0.5)
        if k == 4:
            with open(timeline, "a") as f:
                f.write(json.dumps({"start": started, "end": time.time()}) + "\n")
        tune.report({"cer": cer, "iou": iou, "steps": steps * k // 4})


def timed(run: Any, timeline: Path) -> dict[str, float]:
    timeline.unlink(missing_ok=True)
    t0 = time.time()
    run()
    t1 = time.time()
    spans = [json.loads(line) for line in timeline.read_text().splitlines()]
    first = min(s["start"] for s in spans)
    last = max(s["end"] for s in spans)
    return {"wall": t1 - t0, "startup": first - t0, "loop": last - first, "trials": len(spans)}


def sweep_config(tmp: Path, name: str, trials: int, reuse: bool = True) -> Any:
    """The sweep the trivial trials run in: TPE, 2 at a time, 1 CPU each (the demo's
    model and data are named, never loaded: the trainable replaces the engine)."""
    from vlsweep.search.config import load_sweep_config

    raw = {
        "name": name,
        "model": {"name_or_path": "builtin:tiny-qwen2-vl"},
        "data": {"train": "builtin:demo/train", "val": "builtin:demo/val"},
        "budget": {"steps": 200, "batch_size": 8},
        "search": {"trials": trials, "max_concurrent": 2, "sampler": "tpe", "seed": 0},
        "resources": {"cpus_per_trial": 1, "reuse_actors": reuse},
        "output_dir": str(tmp / "runs" / name),
    }
    return load_sweep_config(tmp / "sweep.yaml", raw)[0]


def vlsweep_sweep(tmp: Path, name: str, args: argparse.Namespace, reuse: bool) -> dict[str, float]:
    from ray import tune

    from vlsweep.search.sweep import run_sweep

    cfg = sweep_config(tmp, name, args.trials, reuse)
    timeline = tmp / "timeline.jsonl"
    trainable = tune.with_parameters(trivial_trial, seconds=args.trial_seconds, timeline=str(timeline))
    out: dict[str, Any] = {}

    def run() -> None:
        out["study"] = run_sweep(
            cfg, tmp, f"sqlite:///{tmp / 'bench.db'}", trainable=trainable, log=lambda _: None
        )

    result = timed(run, timeline)
    complete = sum(t.state.name == "COMPLETE" for t in out["study"].get_trials(deepcopy=False))
    if complete != args.trials:
        raise SystemExit(f"error: {name}: {complete} of {args.trials} trials COMPLETE")
    return result


def bare_tune(tmp: Path, name: str, args: argparse.Namespace) -> dict[str, float]:
    from ray import tune

    timeline = tmp / "timeline.jsonl"
    trainable = tune.with_parameters(trivial_trial, seconds=args.trial_seconds, timeline=str(timeline))
    space = {"params": {"lr_llm": tune.loguniform(1e-5, 1e-2), "weight_ocr": tune.uniform(0.0, 1.0)}}
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=args.trials, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "ray"), verbose=0),
    )
    return timed(tuner.fit, timeline)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trial-seconds", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="1 round of 8 trials (CI smoke run)")
    ap.add_argument("--json", type=Path, default=None, help="write the medians here")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="instead: one vlsweep sweep under cProfile, and where the driver's time per trial goes",
    )
    args = ap.parse_args()
    if args.quick:
        args.trials, args.rounds = 8, 1

    import optuna

    from vlsweep.search.backend import local_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="vlsweep-overhead-"))
    ideal = math.ceil(args.trials / 2) * args.trial_seconds
    setups = {
        "vlsweep": lambda r: vlsweep_sweep(tmp, f"reuse-{r}", args, True),
        "vlsweep, no reuse": lambda r: vlsweep_sweep(tmp, f"noreuse-{r}", args, False),
        "ray tune": lambda r: bare_tune(tmp, f"bare-{r}", args),
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in setups}
    # One Ray for every arm, started as a sweep starts its own: token auth on, loopback only.
    with local_ray(num_cpus=2):
        if args.profile:
            profile(tmp, args)
            return
        for r in range(args.rounds):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            for key in order:
                res = setups[key](r)
                runs[key].append(res)
                print(
                    f"round {r} {key:18s}: {res['wall']:6.1f} s all-in, start-up {res['startup']:4.1f} s, "
                    f"loop {res['loop']:6.1f} s"
                )

    print(f"\n{args.trials} trials of {args.trial_seconds:g} s, 2 at a time on 2 CPUs; ideal {ideal:.1f} s")
    print(f"{'medians':18s}  {'start-up':>8s}  {'per-trial overhead':>18s}  {'all-in ratio':>12s}")
    summary: dict[str, Any] = {}
    for key, rs in runs.items():
        startup = statistics.median(x["startup"] for x in rs)
        loop = statistics.median(x["loop"] for x in rs)
        wall = statistics.median(x["wall"] for x in rs)
        per_trial_ms = 1000 * (loop - ideal) * 2 / args.trials
        print(
            f"{key:18s}  {startup:7.1f}s  {100 * (loop / ideal - 1):8.1f}% ({per_trial_ms:4.0f} ms)  "
            f"{wall / ideal:12.3f}"
        )
        name = {"vlsweep": "vlsweep", "vlsweep, no reuse": "vlsweep_no_reuse", "ray tune": "bare_ray"}[key]
        summary[name] = {
            "per_trial_overhead": round(loop / ideal - 1, 4),
            "per_trial_ms": round(per_trial_ms, 1),
            "startup_s": round(startup, 2),
            "all_in_ratio": round(wall / ideal, 4),
            "rounds": [round(x["loop"] / ideal - 1, 4) for x in rs],
        }
    gap = summary["vlsweep"]["per_trial_overhead"] - summary["bare_ray"]["per_trial_overhead"]
    print(
        f"target: vlsweep (reuse_actors: true) under 5% per trial and within 2 points of bare Ray Tune: "
        f"{summary['vlsweep']['per_trial_overhead']:.1%}, {gap * 100:+.1f} points"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "trials": args.trials,
                    "rounds": args.rounds,
                    "trial_seconds": args.trial_seconds,
                    "auth": "token (set by vlsweep), loopback only, both checked after the start",
                    **summary,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {args.json}")


# The driver's calls per trial that the profile breaks down (cumulative time, per trial).
PROFILED = {
    "searcher.suggest (ask + sample + record)": "searcher.py:.*\\(suggest\\)",
    "  Optuna's ask": "optuna/study/study.py:.*\\(ask\\)",
    "  TPE sampling": "_tpe/sampler.py:.*\\(sample_independent\\)",
    "  parameter writes": "vlsweep/search/driver_storage.py:.*\\(flush\\)",
    "searcher.on_trial_complete (tell, attrs)": "searcher.py:.*\\(on_trial_complete\\)",
    "searcher.on_trial_result (where it ran)": "searcher.py:.*\\(on_trial_result\\)",
    "progress line and heartbeat": "callbacks.py:.*\\(_tick\\)",
    "log_dir attr at trial start": "callbacks.py:.*\\(on_trial_start\\)",
}


def profile(tmp: Path, args: argparse.Namespace) -> None:
    """One warm-up sweep, then one under cProfile; prints the driver's time per trial."""
    import cProfile
    import pstats
    import re

    vlsweep_sweep(tmp, "warm-up", argparse.Namespace(trials=4, trial_seconds=0.2), True)
    prof = cProfile.Profile()
    prof.enable()
    vlsweep_sweep(tmp, "profiled", args, True)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    print(f"driver time per trial ({args.trials} trials, cumulative, ms):")
    for label, pattern in PROFILED.items():
        total = sum(
            ct
            for (file, line, name), (_cc, _nc, _tt, ct, _callers) in stats.items()
            if re.search(pattern, f"{file}:{line}({name})")
        )
        print(f"  {label:44s} {1000 * total / args.trials:6.1f}")


def doc_table(summary: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""
    names = {
        "vlsweep": "vlsweep, `reuse_actors: true` (default)",
        "vlsweep_no_reuse": "vlsweep, `reuse_actors: false`",
        "bare_ray": "bare Ray Tune, reuse on",
    }
    lines = [
        f"{summary['trials']} trials of {summary['trial_seconds']:g} s, 2 at a time on 2 CPUs, "
        f"medians of {summary['rounds']} rounds; Ray auth: {summary['auth']}\n",
        "| set-up | start-up | per-trial overhead | per round | all-in / ideal |",
        "|---|---|---|---|---|",
    ]
    for key, label in names.items():
        r = summary[key]
        rounds = ", ".join(f"{x:.1%}" for x in r["rounds"])
        lines.append(
            f"| {label} | {r['startup_s']:.1f} s | **{r['per_trial_overhead']:.1%}** "
            f"({r['per_trial_ms']:.0f} ms) | {rounds} | {r['all_in_ratio']:.3f} |"
        )
    gap = summary["vlsweep"]["per_trial_overhead"] - summary["bare_ray"]["per_trial_overhead"]
    lines.append(
        f"\nvlsweep against bare Ray Tune: {gap * 100:+.1f} points (targets: under 5%, within 2 points)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
