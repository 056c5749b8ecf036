"""Learning curves of the demo: every evaluation's metrics, every 10% of the steps, for
random configs.

Records the data the multi-fidelity benchmark replays (``benchmarks/mf_replay``): the
embedded demo's model, data, budget (200 steps) and default search space, configs drawn
by Optuna's RandomSampler from a fixed seed, each trained with the trial engine and
evaluated every 20 steps. Each curve point holds the evaluation's metrics (cer, iou, the
per-task validation losses, the parse-failure rate) and the per-task training losses at
that step. One JSON line per config in ``benchmarks/data/learning_curves.jsonl``; a rerun
appends only the configs still missing, so it can be stopped and continued, and the same
seed gives the same configs.

    python benchmarks/learning_curves.py [--configs 300] [--workers 2] [--out FILE] [--every 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "data" / "learning_curves.jsonl"
EVERY = 20


def configs(n: int, seed: int) -> list[dict[str, Any]]:
    """The first ``n`` configs of the demo's default space drawn by RandomSampler(seed)."""
    import optuna

    from vlsweep.search.config import load_sweep_config
    from vlsweep.search.sampling import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg, _ = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    space, settings = cfg.search_space, cfg.settings()
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=make_sampler("random", seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.suggest(trial, settings))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return out


def demo_setup(every: int) -> tuple[Any, Path]:
    """The demo's trial config, evaluated every ``every`` steps, and its base directory."""
    from vlsweep import demo
    from vlsweep.search.config import load_sweep_config

    cfg, base_dir = load_sweep_config(Path(__file__).parents[1] / "vlsweep" / "configs" / "demo-sweep.yaml")
    cfg = demo.resolve(cfg.train_config())
    cfg.budget.eval_every = every
    return cfg, base_dir


def _run(job: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    from vlsweep.params import TrialParams
    from vlsweep.trials import pooled, run_trial

    index, values = job
    demo = pooled("demo")
    curve: list[dict[str, float]] = []
    train_losses: dict[int, dict[str, float]] = {}

    def on_log_row(row: dict[str, Any]) -> None:
        train_losses[row["step"]] = {f"train_{k}": v for k, v in row.items() if k.startswith("loss")}

    def report(step: int, metrics: dict[str, float]) -> None:
        # Everything the evaluation measured (the objectives, the per-task validation
        # losses: smoother candidates for ranking at early rungs) and the training losses
        # of that step; the first 300-config table (2026-11) holds cer and iou only.
        point = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        curve.append({**point, "steps": step, **train_losses.get(step, {})})

    t0 = time.perf_counter()
    try:
        result = run_trial(
            TrialParams.of(values),
            demo.cfg.budget,
            report,
            cfg=demo.cfg,
            data=demo.data,
            base=demo.base,
            on_log_row=on_log_row,
        )
        error = None
        train_seconds = result["train_seconds"]
    except Exception as exc:  # a diverged config is data too: it stops at the step it failed
        error, train_seconds = f"{type(exc).__name__}: {exc}", None
    return {
        "config": index,
        "params": values,
        "curve": curve,
        "error": error,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--every",
        type=int,
        default=EVERY,
        help="evaluate every N steps (each evaluation runs the whole val set)",
    )
    args = ap.parse_args()

    from vlsweep.trials import base_pool

    todo_all = list(enumerate(configs(args.configs, args.seed)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {json.loads(line)["config"] for line in args.out.read_text().splitlines() if line.strip()}
    todo = [job for job in todo_all if job[0] not in done]
    print(f"{len(done)} configs recorded, {len(todo)} to go, {args.workers} workers", flush=True)
    t0 = time.perf_counter()
    with (
        base_pool({"demo": demo_setup(args.every)}, workers=args.workers) as pool,
        args.out.open("a") as f,
    ):
        for k, row in enumerate(pool.imap_unordered(_run, todo), start=1):
            f.write(json.dumps(row) + "\n")
            f.flush()
            if k % 10 == 0 or k == len(todo):
                print(f"{k}/{len(todo)} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
