"""Sweep small, train big: how far a sweep of builtin:tiny-qwen2-vl carries to its larger
sibling builtin:tiny-qwen2-vl-wide (the same vision tower, a language model 2.25x as wide,
4.6x the language-model parameters). The demo's data, steps and space on both.

Three parts, each written into one JSON file (``--json``, read and updated):

``cost``: measured before any arm ran and fixed from then on. The training step of the
demo's trial on each model, side by side (rounds alternate which model goes first, so
machine noise hits both alike), in process CPU seconds per step; ``r`` is the target's
step cost over the source's.

``rank``: do the two models order configurations alike? ``--configs`` configurations
drawn at random (Optuna's RandomSampler) from the demo's default space, each trained on
both models with ``--seeds`` training seeds, in a pool of processes that load both bases
once. Spearman's correlation per objective between the models (of the means over seeds,
and seed by seed), beside each model's correlation with itself across seeds: the ceiling
the noise of one run leaves. And the demo's shared-learning-rate scan repeated on both
models (every other value the baseline's), so their best shared rates can be set beside
the per-module rates their sweeps' knees chose.

``arms``: what a carried front is worth against sweeping the large model, per sampler
seed, each with real sweeps (``run_sweep`` on a local Ray, the demo's trials, steps and
sampler): ``carried`` = the 16-trial demo sweep on the small model, then its Pareto front
(knee first) re-run on the large one; ``carried_plus`` = the same and 4 more target
trials searched with the source's trials as the sampler's prior knowledge (one target
sweep; its first trials are the carried ones); ``target_sweep`` = the 16-trial sweep on
the large model. Each arm's hypervolume of its target-model trials (reference cer = 1,
iou = 0) and its compute: the ``cpu_seconds`` every trial recorded, on both models, the
baseline trial included. Each rescaling rule re-runs the carried points on the target.
The break-even cost ratio: a target trial costs r source trials, so with the target
trials' CPU expressed in source-trial units (divided by the measured r), ``carried``
costs S + r*c and ``target_sweep`` r*t; it is cheaper above r = S / (t - c).

Usage::

    python benchmarks/transfer.py cost [--steps 40] [--rounds 4] [--json docs/benchmarks/transfer.json]
    python benchmarks/transfer.py rank [--configs 30] [--seeds 0,1] [--json docs/benchmarks/transfer.json]
    python benchmarks/transfer.py arms [--seeds 0,1,2] [--json docs/benchmarks/transfer.json]
    python benchmarks/transfer.py rank --quick; python benchmarks/transfer.py arms --quick   # CI smoke
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

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "docs" / "benchmarks"
SOURCE, TARGET = "builtin:tiny-qwen2-vl", "builtin:tiny-qwen2-vl-wide"
SOURCE_YAML = ROOT / "examples" / "demo-sweep.yaml"
TARGET_YAML = ROOT / "examples" / "demo-wide-sweep.yaml"
MODELS = {"source": SOURCE, "target": TARGET}
REFERENCE = [1.0, 0.0]
DIRECTIONS = ["minimize", "maximize"]
# The demo's shared-rate scan: seven rates half a decade apart (benchmarks/lr_tradeoff.py).
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
RULES = ("none", "hidden")
EXTRA_TRIALS = 4  # carried_plus: target trials searched after the carried ones


def demo_config(model: str) -> tuple[Any, Path]:
    """The demo sweep's trial config (its data, budget and LoRA layout) on ``model``."""
    from vlsweep import demo
    from vlsweep.search.config import load_sweep_config

    sweep, base_dir = load_sweep_config(ROOT / "examples" / "demo-sweep.yaml")
    cfg = sweep.train_config()
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": model})})
    return demo.resolve(cfg), base_dir


def sizes(base: Any, family: Any) -> dict[str, int]:
    """All parameters, and the language model's (what the sibling widens)."""
    import re

    llm = re.compile(family.groups["llm"])
    named = list(base.named_parameters())
    return {
        "parameters": sum(p.numel() for _, p in named),
        "llm_parameters": sum(p.numel() for n, p in named if llm.match(n)),
    }


def step_cost(steps: int, rounds: int) -> dict[str, Any]:
    """CPU seconds per training step of the demo's baseline trial on each model."""
    import torch

    from vlsweep.params import BASELINE, TrialParams
    from vlsweep.trials import TaskMixer, load_base, load_data
    from vlsweep.trials.engine import Trainer

    setups = {}
    for role, model in (("source", SOURCE), ("target", TARGET)):
        cfg, base_dir = demo_config(model)
        data = load_data(cfg.data, base_dir)
        base = load_base(cfg.model)
        setups[role] = (cfg, data, base)
    mixer = TaskMixer([r.task for r in setups["source"][1].train], 1.0, seed=0)
    batches = [mixer.batch(setups["source"][0].budget.batch_size) for _ in range(steps)]

    def run(role: str) -> float:
        cfg, data, base = setups[role]
        trainer = Trainer(TrialParams.model_validate(BASELINE), cfg.budget, cfg=cfg, data=data, base=base)
        trainer.attach()
        trainer.model.train()
        trainer.step(trainer.train_batch(batches[0]))  # warm-up, not counted
        t0 = time.process_time()
        for idx in batches:
            trainer.step(trainer.train_batch(idx))
        seconds = (time.process_time() - t0) / steps
        trainer.detach()
        return seconds

    per_step: dict[str, list[float]] = {"source": [], "target": []}
    for k in range(rounds):
        for role in ("source", "target") if k % 2 == 0 else ("target", "source"):
            per_step[role].append(run(role))
    models: dict[str, dict[str, Any]] = {}
    for role, (_, _, base) in setups.items():
        models[role] = {
            "model": SOURCE if role == "source" else TARGET,
            **sizes(base.model, base.family),
            "step_s": statistics.median(per_step[role]),
            "step_s_rounds": [round(s, 4) for s in per_step[role]],
        }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "steps": steps,
        "rounds": rounds,
        "batch_size": setups["source"][0].budget.batch_size,
        "torch_threads": torch.get_num_threads(),
        "models": models,
        "r": models["target"]["step_s"] / models["source"]["step_s"],
    }


# --- rank: do the two models order configurations alike? -------------------------------


def _train(job: tuple[str, str, int, dict[str, Any], int]) -> dict[str, Any]:
    from vlsweep.params import TrialParams
    from vlsweep.trials import pooled, run_trial

    kind, role, key, values, seed = job
    loaded = pooled(role)
    cfg = loaded.cfg.model_copy(update={"seed": seed})
    row: dict[str, Any] = {"kind": kind, "role": role, "key": key, "seed": seed}
    try:
        result = run_trial(TrialParams.of(values), cfg.budget, cfg=cfg, data=loaded.data, base=loaded.base)
        row.update(cer=result["cer"], iou=result["iou"], cpu_s=round(result["cpu_seconds"], 2))
    except FloatingPointError as exc:  # a diverged run: no metrics, ranked below every run
        row.update(cer=None, iou=None, error=str(exc)[:200])
    return row


def draw_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations of the demo's default space, as a sweep's worker resolves them
    (conditional and tied parameters included), drawn by Optuna's RandomSampler."""
    import optuna

    from vlsweep.params import TrialParams
    from vlsweep.search.config import load_sweep_config

    cfg, _ = load_sweep_config(SOURCE_YAML)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(TrialParams.of(cfg.search_space.suggest(trial, cfg.settings())).to_dict())
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return out


def _pool_run(jobs: list[Any], workers: int, steps: int | None) -> list[dict[str, Any]]:
    """The jobs in a pool of processes that each load both models (and their data) once."""
    from vlsweep.trials import base_pool

    setups = {}
    for role, model in MODELS.items():
        cfg, base_dir = demo_config(model)
        if steps is not None:
            cfg.budget.steps = steps
        setups[role] = (cfg, base_dir)
    rows = []
    with base_pool(setups, workers=workers) as pool:
        for row in pool.imap_unordered(_train, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho; None when one side is constant (it orders nothing)."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


# A diverged run ranks below every real one (CER has no upper bound: insertions count).
_DIVERGED = {"cer": math.inf, "iou": -math.inf}


def rank(
    configs: int, seeds: list[int], scan_seeds: list[int], lrs: list[float], workers: int, steps: int | None
) -> dict[str, Any]:
    from vlsweep.params import BASELINE

    points = draw_configs(configs, seed=0)
    jobs: list[Any] = []
    # Interleaved, so what the machine does meanwhile falls on both models alike.
    for i, values in enumerate(points):
        for seed in seeds:
            for role in MODELS:
                jobs.append(("config", role, i, values, seed))
    for lr in lrs:
        for seed in scan_seeds:
            for role in MODELS:
                jobs.append(
                    ("scan", role, lr, {**BASELINE, "lr_vision": lr, "lr_projector": lr, "lr_llm": lr}, seed)
                )
    t0 = time.perf_counter()
    rows = _pool_run(jobs, workers, steps)
    config_rows = sorted(
        (r for r in rows if r["kind"] == "config"), key=lambda r: (r["key"], r["seed"], r["role"])
    )
    scan_rows = sorted(
        (r for r in rows if r["kind"] == "scan"), key=lambda r: (r["role"], r["key"], r["seed"])
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "steps": steps or demo_config(SOURCE)[0].budget.steps,
        "configs": points,
        "seeds": seeds,
        "rows": config_rows,
        "scan": scan_rows,
        "seconds": round(time.perf_counter() - t0, 1),
        **correlations(config_rows),
    }


def correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman per objective: between the models seed by seed (the like of the
    self-correlation) and of the means over seeds (less noisy, so it may pass the ceiling),
    and each model with itself across seed pairs (the ceiling the noise of one run leaves)."""
    from itertools import combinations

    keys = sorted({r["key"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    at = {(r["role"], r["key"], r["seed"]): r for r in rows}

    def value(role: str, key: int, seed: int, metric: str) -> float:
        v = at[(role, key, seed)][metric]
        return _DIVERGED[metric] if v is None else float(v)

    def column(role: str, metric: str, seed: int | None = None) -> list[float]:
        if seed is not None:
            return [value(role, k, seed, metric) for k in keys]
        return [statistics.mean(value(role, k, s, metric) for s in seeds) for k in keys]

    out: dict[str, Any] = {
        "rank_correlation": {},
        "rank_correlation_by_seed": {},
        "self_correlation": {},
        "diverged": {role: sum(1 for r in rows if r["role"] == role and r["cer"] is None) for role in MODELS},
    }
    for m in ("cer", "iou"):
        out["rank_correlation"][m] = spearman(column("source", m), column("target", m))
        out["rank_correlation_by_seed"][m] = _mean(
            [spearman(column("source", m, s), column("target", m, s)) for s in seeds]
        )
    for role in MODELS:
        out["self_correlation"][role] = {
            m: _mean([spearman(column(role, m, a), column(role, m, b)) for a, b in combinations(seeds, 2)])
            for m in ("cer", "iou")
        }
    return out


def scan_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean CER and IoU per shared rate over the runs that did not diverge
    (with how many did), the rate with the lowest mean CER and the one with the highest
    mean IoU."""
    out = {}
    for role in MODELS:
        stats = []
        for lr in sorted({r["key"] for r in rows if r["role"] == role}):
            at = [r for r in rows if r["role"] == role and r["key"] == lr]
            stats.append(
                {
                    "lr": lr,
                    "cer": _mean([r["cer"] for r in at]),
                    "iou": _mean([r["iou"] for r in at]),
                    "diverged": sum(1 for r in at if r["cer"] is None),
                }
            )
        ran = [s for s in stats if s["cer"] is not None]
        out[role] = {
            "cer_best_lr": min(ran, key=lambda s: s["cer"])["lr"] if ran else None,
            "iou_best_lr": max(ran, key=lambda s: s["iou"])["lr"] if ran else None,
            "stats": stats,
        }
    return out


# --- arms: a carried front against sweeping the large model -------------------------------


def _sweep(
    role: str,
    name: str,
    seed: int,
    root: Path,
    *,
    trials: int | None = None,
    steps: int | None = None,
    transfer: dict[str, Any] | None = None,
    baseline: bool = True,
) -> Any:
    """One real sweep (``run_sweep``, a local Ray) of the demo's config on ``role``'s model."""
    from vlsweep.search.config import SweepConfig, load_sweep_config
    from vlsweep.search.sweep import run_sweep

    cfg, base_dir = load_sweep_config(SOURCE_YAML if role == "source" else TARGET_YAML)
    raw = cfg.model_dump(mode="json", exclude={"storage"})
    raw.update(name=name, output_dir=str(root / "runs" / name))
    raw["search"].update(seed=seed, baseline=baseline)
    if trials is not None:
        raw["search"]["trials"] = trials
    if steps is not None:
        raw["budget"]["steps"] = steps
    if transfer is not None:
        raw["search"]["transfer_from"] = transfer
    t0 = time.perf_counter()
    with (root / f"{name}.log").open("w") as log:
        study = run_sweep(
            SweepConfig.model_validate(raw),
            base_dir,
            f"sqlite:///{root / 'studies.db'}",
            log=lambda line: print(line, file=log, flush=True),
        )
    print(f"  {name}: {len(study.trials)} trials in {time.perf_counter() - t0:.0f} s", flush=True)
    return study


def _trials(study: Any, carried: bool | None = None) -> list[Any]:
    """The study's trials (only the carried ones, or only the others, when asked)."""
    from vlsweep.outcomes import CARRIED_ATTR

    return [t for t in study.trials if carried is None or (CARRIED_ATTR in t.user_attrs) == carried]


def _hv(trials: list[Any]) -> float:
    from optuna.trial import TrialState

    from vlsweep.pareto import hypervolume

    points = [t.values for t in trials if t.state == TrialState.COMPLETE and t.values]
    return hypervolume(points, REFERENCE, DIRECTIONS)


def _cpu(trials: list[Any]) -> float:
    """The CPU seconds the trials recorded; a trial that failed recorded none (counted apart)."""
    return sum(float(t.user_attrs.get("cpu_seconds", 0.0)) for t in trials)


def _knee_lrs(study: Any) -> dict[str, float]:
    from vlsweep.pareto import knee
    from vlsweep.results import SweepResults

    front = sorted(SweepResults.of(study).front, key=lambda t: t.number)  # as carry orders it
    if not front:
        return {}
    t = front[knee([f.values for f in front], DIRECTIONS)]
    return {k: v for k, v in t.params.items() if k.startswith("lr_")}


def arm_round(seed: int, root: Path, trials: int | None, steps: int | None) -> dict[str, Any]:
    from vlsweep.outcomes import CARRIED_ATTR
    from vlsweep.results import SweepResults

    source = _sweep("source", f"source-s{seed}", seed, root, trials=trials, steps=steps)
    front = len(SweepResults.of(source).front)
    carry = {"study": source.study_name}
    plus = _sweep(
        "target",
        f"carried-s{seed}",
        seed,
        root,
        trials=front + EXTRA_TRIALS,
        steps=steps,
        transfer={**carry, "rescale": "none"},
        baseline=False,
    )
    rescaled = {"none": _hv(_trials(plus, carried=True))}
    for rule in RULES[1:]:
        study = _sweep(
            "target",
            f"{rule}-s{seed}",
            seed,
            root,
            trials=front,
            steps=steps,
            transfer={**carry, "rescale": rule},
            baseline=False,
        )
        rescaled[rule] = _hv(_trials(study, carried=True))
    target = _sweep("target", f"target-s{seed}", seed, root, trials=trials, steps=steps)
    s_cpu, c_cpu, p_cpu, t_cpu = (
        _cpu(_trials(source)),
        _cpu(_trials(plus, carried=True)),
        _cpu(_trials(plus)),
        _cpu(_trials(target)),
    )
    studies = (("source", source), ("carried", plus), ("target", target))
    failed = {n: sum(1 for t in _trials(st) if t.state.name == "FAIL") for n, st in studies}
    unpriced = {n: sum(1 for t in _trials(st) if "cpu_seconds" not in t.user_attrs) for n, st in studies}
    # The same parameters on both models, one thread each: a whole trial's cost ratio.
    pairs = []
    for t in _trials(plus, carried=True):
        src = source.trials[t.user_attrs[CARRIED_ATTR]["trial"]]
        if "cpu_seconds" in t.user_attrs and "cpu_seconds" in src.user_attrs:
            pairs.append(t.user_attrs["cpu_seconds"] / src.user_attrs["cpu_seconds"])
    return {
        "seed": seed,
        "front_size": front,
        "cpu_ratio_pairs": pairs,
        "unpriced_trials": unpriced,
        "carried": {
            "hypervolume": rescaled["none"],
            "cpu_s": s_cpu + c_cpu,
            "source_cpu_s": s_cpu,
            "target_cpu_s": c_cpu,
            "target_trials": len(_trials(plus, carried=True)),
        },
        "carried_plus": {
            "hypervolume": _hv(_trials(plus)),
            "cpu_s": s_cpu + p_cpu,
            "source_cpu_s": s_cpu,
            "target_cpu_s": p_cpu,
            "target_trials": len(_trials(plus)),
        },
        "target_sweep": {
            "hypervolume": _hv(_trials(target)),
            "cpu_s": t_cpu,
            "source_cpu_s": 0.0,
            "target_cpu_s": t_cpu,
            "target_trials": len(_trials(target)),
        },
        "source_hypervolume": _hv(_trials(source)),
        "rescale": rescaled,
        "failed_trials": failed,
        "knee_lrs": {"source": _knee_lrs(source), "target": _knee_lrs(target)},
    }


def arms(seeds: list[int], r: float, trials: int | None, steps: int | None) -> dict[str, Any]:
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            print(f"sampler seed {seed}:", flush=True)
            rounds.append(arm_round(seed, Path(tmp), trials, steps))
            print(json.dumps(rounds[-1]), flush=True)
    return {"date": time.strftime("%Y-%m-%d"), **summarize(rounds, r)}


def break_even(source_cpu: float, carried_cpu: float, target_cpu: float, r: float) -> float | None:
    """The cost ratio above which carrying is cheaper. The target trials' CPU is put in
    source-trial units (over the measured r); then carrying costs S + r*c and sweeping the
    target r*t, equal at r = S / (t - c). None when the carried trials cost the target as
    much as its own sweep (no r makes carrying cheaper)."""
    c, t = carried_cpu / r, target_cpu / r
    return source_cpu / (t - c) if t > c else None


def summarize(rounds: list[dict[str, Any]], r: float) -> dict[str, Any]:
    """The arms' lists (one entry per sampler seed), the rescale rules' and the break-even
    ratio, from the rounds ``arm_round`` measured; ``r`` is the cost part's."""
    names = ("carried", "carried_plus", "target_sweep")
    s = statistics.median(rd["carried"]["source_cpu_s"] for rd in rounds)
    c = statistics.median(rd["carried"]["target_cpu_s"] for rd in rounds)
    t = statistics.median(rd["target_sweep"]["target_cpu_s"] for rd in rounds)
    pairs = [x for rd in rounds for x in rd.get("cpu_ratio_pairs", [])]
    r_trials = statistics.median(pairs) if pairs else None
    return {
        "seeds": [rd["seed"] for rd in rounds],
        "rounds": rounds,
        "arms": {
            a: {k: [rd[a][k] for rd in rounds] for k in ("hypervolume", "cpu_s", "target_trials")}
            for a in names
        },
        "rescale": {rule: {"hypervolume": [rd["rescale"][rule] for rd in rounds]} for rule in RULES},
        # Of the medians over seeds; and seed by seed.
        "break_even_r": break_even(s, c, t, r),
        "break_even_r_by_seed": [
            break_even(
                rd["carried"]["source_cpu_s"],
                rd["carried"]["target_cpu_s"],
                rd["target_sweep"]["target_cpu_s"],
                r,
            )
            for rd in rounds
        ],
        # The same with r read off the trials themselves: the carried points' CPU over their
        # source trials' (same parameters, one thread each, evaluation included), where the
        # cost part timed training steps alone with torch's default threads.
        "r_trials": r_trials,
        "break_even_r_trials": break_even(s, c, t, r_trials) if r_trials else None,
        "break_even_inputs": {
            "r_measured": r,
            "source_cpu_s": s,
            "carried_target_units": c / r,
            "target_sweep_units": t / r,
        },
    }


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal (carried median HV at least 95% of target_sweep's), and each rescale
    rule against `none`: better when its median gain over the seeds exceeds the gains'
    standard deviation over the seeds."""
    hv = {a: summary["arms"][a]["hypervolume"] for a in summary["arms"]}
    med = {a: statistics.median(v) for a, v in hv.items()}
    sd = {a: statistics.stdev(v) if len(v) > 1 else 0.0 for a, v in hv.items()}
    rules = {k: statistics.median(v["hypervolume"]) for k, v in summary["rescale"].items()}
    # Each rule against `none` on the same seed's carried points (the seeds are paired): its
    # median gain, and the spread of the gains over seeds.
    gains = {
        k: [a - b for a, b in zip(v["hypervolume"], summary["rescale"]["none"]["hypervolume"], strict=True)]
        for k, v in summary["rescale"].items()
        if k != "none"
    }
    return {
        "median_hypervolume": med,
        "sd_hypervolume": sd,
        "carried_over_target": med["carried"] / med["target_sweep"] if med["target_sweep"] else None,
        "carried_plus_over_target": med["carried_plus"] / med["target_sweep"]
        if med["target_sweep"]
        else None,
        "goal_95_met": bool(med["target_sweep"] and med["carried"] >= 0.95 * med["target_sweep"]),
        "rescale_medians": rules,
        "rescale_gains": gains,
        "rescale_median_gain": {k: statistics.median(g) for k, g in gains.items()},
        "rescale_gain_spread": {k: statistics.stdev(g) if len(g) > 1 else 0.0 for k, g in gains.items()},
        "rescale_better_than_spread": {
            k: statistics.median(g) > (statistics.stdev(g) if len(g) > 1 else 0.0) for k, g in gains.items()
        },
    }


# --- the docs' tables (benchmarks/doc_tables.py) -------------------------------------------


def _rho(value: float | None) -> str:
    return "constant" if value is None else f"{value:.2f}"


def doc_rank(summary: dict[str, Any]) -> str:
    rank_ = summary["rank"]
    lines = [
        "| objective | source vs. target, seed by seed | source vs. itself | target vs. itself "
        "| source vs. target, means over seeds |",
        "|---|---|---|---|---|",
    ]
    for m in ("cer", "iou"):
        self_ = rank_["self_correlation"]
        lines.append(
            f"| {m} | **{_rho(rank_['rank_correlation_by_seed'][m])}** | {_rho(self_['source'][m])} "
            f"| {_rho(self_['target'][m])} | {_rho(rank_['rank_correlation'][m])} |"
        )
    diverged = rank_.get("diverged", {})
    lines.append(
        f"\n{len(rank_['configs'])} configurations, {len(rank_['seeds'])} training seeds each, "
        f"{rank_['steps']} steps, on both models (Spearman's rho; runs that diverged: "
        f"{diverged.get('source', 0)} on the source, {diverged.get('target', 0)} on the target, "
        "ranked below every other)."
    )
    return "\n".join(lines)


def _lr(value: float | None) -> str:
    return "none" if value is None else f"{value:.0e}"


def doc_scan(summary: dict[str, Any]) -> str:
    best = scan_best(summary["rank"]["scan"])
    lrs = [s["lr"] for s in best["source"]["stats"]]
    lines = ["| shared LR | " + " | ".join(f"{lr:.0e}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
    for role in MODELS:
        for m in ("cer", "iou"):
            cells = [
                "diverged" if s[m] is None else f"{s[m]:.3f}" + ("*" if s["diverged"] else "")
                for s in best[role]["stats"]
            ]
            lines.append(f"| {role} {dict(cer='CER', iou='IoU')[m]} | " + " | ".join(cells) + " |")
    lines.append("")
    runs = len({r["seed"] for r in summary["rank"]["scan"]})
    lines.append(f"Means over {runs} training seeds; * one or more of them diverged (left out).")
    lines.append("")
    for role in MODELS:
        knees = [rd["knee_lrs"][role] for rd in summary["arms_detail"]["rounds"]]
        shown = "; ".join(", ".join(f"{k[3:]} {v:.0e}" for k, v in sorted(kn.items())) for kn in knees)
        lines.append(
            f"- {role}: best shared LR for CER {_lr(best[role]['cer_best_lr'])}, for IoU "
            f"{_lr(best[role]['iou_best_lr'])}; its sweeps' knees, per sampler seed: {shown}"
        )
    return "\n".join(lines)


def _joined(values: list[Any], spec: str) -> str:
    return ", ".join(format(v, spec) for v in values)


def _trial_ratio_line(detail: dict[str, Any]) -> str:
    r, be = detail.get("r_trials"), detail.get("break_even_r_trials")
    if r is None:
        return "- (no carried trial with its source trial's CPU recorded)"
    shown = f"r = {be:.2f}" if be is not None else "none"
    return (
        f"- Priced instead by the whole trials' ratio (each carried point's CPU over its source "
        f"trial's, median {r:.2f}): break-even {shown}"
    )


def doc_arms(summary: dict[str, Any]) -> str:
    v = verdict(summary)
    rounds = summary["arms_detail"]["rounds"]
    lines = [
        "| arm | hypervolume on the target, per sampler seed | median | CPU s, per seed | target trials |",
        "|---|---|---|---|---|",
    ]
    for a in ("carried", "carried_plus", "target_sweep"):
        arm = summary["arms"][a]
        lines.append(
            f"| `{a}` | {_joined(arm['hypervolume'], '.4f')} | **{v['median_hypervolume'][a]:.4f}** "
            f"| {_joined(arm['cpu_s'], '.0f')} | {_joined(arm['target_trials'], 'd')} |"
        )
    for rule, hv in summary["rescale"].items():
        lines.append(
            f"| `carried`, `--rescale {rule}` | {_joined(hv['hypervolume'], '.4f')} "
            f"| {statistics.median(hv['hypervolume']):.4f} | | |"
        )
    met = "met" if v["goal_95_met"] else "not met"
    be = summary["break_even_r"]
    r = summary["arms_detail"]["break_even_inputs"]["r_measured"]
    better = "better" if v["rescale_better_than_spread"].get("hidden") else "not better"
    lines += [
        "",
        f"- `carried` median over `target_sweep` median: **{v['carried_over_target']:.1%}** (the goal, at "
        f"least 95%: {met}); `carried_plus`: {v['carried_plus_over_target']:.1%}.",
        "- Per sampler seed, over `target_sweep`: `carried` "
        + _joined([rd["carried"]["hypervolume"] / rd["target_sweep"]["hypervolume"] for rd in rounds], ".1%")
        + "; `carried` with `--rescale hidden` "
        + _joined([rd["rescale"]["hidden"] / rd["target_sweep"]["hypervolume"] for rd in rounds], ".1%")
        + "; `carried_plus` "
        + _joined(
            [rd["carried_plus"]["hypervolume"] / rd["target_sweep"]["hypervolume"] for rd in rounds], ".1%"
        )
        + ".",
        f"- Source fronts of {_joined([rd['front_size'] for rd in rounds], 'd')} points; the source sweeps' "
        f"own hypervolume, on the small model: {_joined([d['source_hypervolume'] for d in rounds], '.4f')}.",
        f"- Break-even cost ratio: **r = {be:.2f}**, with the step cost ratio r = {r:.2f} pricing the "
        "target trials"
        if be is not None
        else f"- No break-even ratio: the carried points cost the target as much as its sweep (r = {r:.2f})",
        _trial_ratio_line(summary["arms_detail"]),
        "- Failed trials (priced: a failed trial records its CPU too), source / carried / target sweeps, "
        "per seed: "
        + "; ".join(
            " / ".join(str(rd["failed_trials"][n]) for n in ("source", "carried", "target")) for rd in rounds
        ),
        f"- `--rescale hidden` against `none`, seed by seed: gains of "
        f"{_joined(v['rescale_gains']['hidden'], '+.4f')}, median {v['rescale_median_gain']['hidden']:+.4f} "
        f"against a spread (s.d.) of {v['rescale_gain_spread']['hidden']:.4f}: {better} by more than the "
        "spread.",
    ]
    return "\n".join(lines)


# The real family (Qwen2-VL technical report, arXiv:2409.12191, Table 1): one vision
# encoder of 675M parameters for all three; language models of 1.5B, 7.6B and 72B.
FAMILY = {"2B": 1.5e9, "7B": 7.6e9, "72B": 72e9}
VISION_PARAMETERS = 675e6
# Two inputs, tokens through each part: Qwen2-VL's vision tower sees 14x14 patches, its
# merger hands the language model one token per 2x2 of them (sides rounded to 28 pixels,
# as its processor does); 64 text tokens besides.
INPUTS = {"a 448x448 crop": (32 * 32, 16 * 16 + 64), "a 1024x1024 page": (74 * 74, 37 * 37 + 64)}


def family_r(target: str, patches: int, tokens: int) -> float:
    """A target step's cost over the 2B's, by forward-and-backward FLOPs (the same multiple
    of the parameters per token for both parts, so it cancels) with attention's quadratic
    term left out: an estimate for the same data, not a measurement."""
    small = patches * VISION_PARAMETERS + tokens * FAMILY["2B"]
    return (patches * VISION_PARAMETERS + tokens * FAMILY[target]) / small


def doc_family_cost(summary: dict[str, Any]) -> str:
    """What carrying costs against sweeping at the real family's ratios, from the arms'
    measured CPU (target trials in source-trial units) priced at each estimated r."""
    inputs = summary["arms_detail"]["break_even_inputs"]
    s, c, t = inputs["source_cpu_s"], inputs["carried_target_units"], inputs["target_sweep_units"]
    rounds = summary["arms_detail"]["rounds"]
    p = statistics.median(rd["carried_plus"]["target_cpu_s"] for rd in rounds) / inputs["r_measured"]
    lines = [
        "| 2B to | input | estimated r | `carried` / `target_sweep` cost | `carried_plus` / `target_sweep` |",
        "|---|---|---|---|---|",
    ]
    for target in ("7B", "72B"):
        for name, (patches, tokens) in INPUTS.items():
            r = family_r(target, patches, tokens)
            lines.append(
                f"| {target} | {name} | {r:.1f} | {(s + r * c) / (r * t):.0%} | {(s + r * p) / (r * t):.0%} |"
            )
    return "\n".join(lines)


def write_summary(path: Path, part: str, result: dict[str, Any]) -> None:
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if part == "cost":
        summary["cost"] = result
        summary["models"] = {
            role: {k: m[k] for k in ("model", "parameters", "llm_parameters", "step_s")}
            for role, m in result["models"].items()
        }
    elif part == "rank":
        summary["rank"] = result
        for key in ("rank_correlation", "self_correlation"):
            summary[key] = result[key]
        summary["scan_best"] = {
            role: {k: v for k, v in b.items() if k != "stats"}
            for role, b in scan_best(result["scan"]).items()
        }
    else:
        summary["arms_detail"] = {
            k: result[k]
            for k in (
                "date",
                "seeds",
                "rounds",
                "break_even_inputs",
                "break_even_r_by_seed",
                "r_trials",
                "break_even_r_trials",
            )
        }
        for key in ("arms", "rescale", "break_even_r"):
            summary[key] = result[key]
        summary["verdict"] = verdict(result)
    summary["reference_point"] = REFERENCE
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    cost = sub.add_parser("cost", help="the step cost ratio r of target to source")
    cost.add_argument("--steps", type=int, default=40)
    cost.add_argument("--rounds", type=int, default=4)
    rank_p = sub.add_parser("rank", help="rank correlation of configurations between the models; the LR scan")
    rank_p.add_argument("--configs", type=int, default=30)
    rank_p.add_argument("--seeds", default="0,1", help="training seeds per configuration")
    rank_p.add_argument("--scan-seeds", default="0,1", help="training seeds per shared LR")
    rank_p.add_argument("--workers", type=int, default=2)
    arms_p = sub.add_parser("arms", help="carried, carried_plus and target_sweep over sampler seeds")
    arms_p.add_argument("--seeds", default="0,1,2", help="sampler seeds")
    arms_p.add_argument(
        "--resummarize", action="store_true", help="run nothing: summarize again the rounds stored in --json"
    )
    for p in (cost, rank_p, arms_p):
        p.add_argument("--quick", action="store_true", help="a smoke run (CI): tiny budgets")
        p.add_argument("--json", type=Path, help="write the figures into this file (merged by part)")
    args = ap.parse_args()
    if args.part == "cost":
        if args.quick:
            args.steps, args.rounds = 5, 2
        result = step_cost(args.steps, args.rounds)
        for role, m in result["models"].items():
            print(
                f"{role}: {m['model']}: {m['parameters']:,} parameters ({m['llm_parameters']:,} in the "
                f"language model), {m['step_s'] * 1000:.0f} ms CPU per step (rounds {m['step_s_rounds']})"
            )
        src, tgt = result["models"]["source"], result["models"]["target"]
        print(
            f"r = {result['r']:.2f} (target/source CPU per step; language model "
            f"{tgt['llm_parameters'] / src['llm_parameters']:.2f}x)"
        )
    elif args.part == "rank":
        seeds = [int(s) for s in args.seeds.split(",")]
        scan_seeds = [int(s) for s in args.scan_seeds.split(",")]
        configs, lrs, steps = args.configs, LRS, None
        if args.quick:
            configs, lrs, steps = 3, [1e-4, 1e-2], 10
        result = rank(configs, seeds, scan_seeds, lrs, args.workers, steps)
        print(
            json.dumps(
                {k: result[k] for k in ("rank_correlation", "rank_correlation_by_seed", "self_correlation")}
            )
        )
        print(
            json.dumps(
                {
                    role: {k: v for k, v in b.items() if k != "stats"}
                    for role, b in scan_best(result["scan"]).items()
                }
            )
        )
    elif args.resummarize:
        if not args.json:
            ap.error("--resummarize needs --json (the stored rounds)")
        stored = json.loads(args.json.read_text())
        detail = stored["arms_detail"]
        result = {
            "date": detail["date"],
            **summarize(detail["rounds"], detail["break_even_inputs"]["r_measured"]),
        }
        print(json.dumps(verdict(result)))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        trials, steps = (3, 10) if args.quick else (None, None)
        if args.quick:
            seeds = seeds[:1]
        known = json.loads((FILES / "transfer.json").read_text())
        # r is fixed before any arm ran (the cost part); the quick run reads it too.
        result = arms(seeds, known["cost"]["r"], trials, steps)
        print(json.dumps({k: result[k] for k in ("arms", "rescale", "break_even_r")}))
        if len(seeds) > 1:
            print(json.dumps(verdict(result)))
    if args.json:
        write_summary(args.json, args.part, result)


if __name__ == "__main__":
    main()
