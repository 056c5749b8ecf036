"""Sweep small, train big: how far a sweep of builtin:tiny-qwen2-vl carries to its larger
sibling builtin:tiny-qwen2-vl-wide (the same vision tower, a language model 2.25x as wide,
4.6x the parameters).

One part so far, measured before any arm of the transfer runs and fixed from then on:

``cost``: the training step of the demo's trial on each model, side by side (rounds
alternate which model goes first, so machine noise hits both alike), in process CPU
seconds per step; ``r`` is the target's step cost over the source's. It prices the arms:
a carried front costs the source sweep plus a few target trials, a target sweep costs
every trial at r times the source's price.

Usage::

    python benchmarks/transfer.py cost [--steps 40] [--rounds 4] [--json docs/benchmarks/transfer.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TARGET = "builtin:tiny-qwen2-vl", "builtin:tiny-qwen2-vl-wide"


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
    models = {}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    cost = sub.add_parser("cost", help="the step cost ratio r of target to source")
    cost.add_argument("--steps", type=int, default=40)
    cost.add_argument("--rounds", type=int, default=4)
    cost.add_argument("--quick", action="store_true", help="2 rounds of 5 steps (CI smoke run)")
    cost.add_argument("--json", type=Path, help="write the figures into this file (merged by part)")
    args = ap.parse_args()
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
    if args.json:
        summary = json.loads(args.json.read_text()) if args.json.exists() else {}
        summary["cost"] = result
        summary["models"] = {
            role: {k: m[k] for k in ("model", "parameters", "llm_parameters", "step_s")}
            for role, m in result["models"].items()
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
