"""What each loss balance and data strategy costs per training step, against static weights.

Same base model, same data, same steps: for each strategy a fresh LoRA adapter trains
``--steps`` steps through the engine's own ``Trainer.step``; rounds go through every
strategy in turn (each round starting one strategy later) so that machine noise hits all
alike. Prints the median samples/s of each and its ratio to ``static``
(docs/strategies.md, docs/benchmarks.md).

    python benchmarks/strategy_cost.py [--model builtin:tiny-qwen2-vl] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

# The strategy -> the TrialParams fields it sets (over the engine defaults).
CASES: dict[str, dict[str, object]] = {
    "static": {},
    "uncertainty": {"loss_balance": "uncertainty"},
    "famo": {"loss_balance": "famo"},
    "pcgrad": {"loss_balance": "pcgrad"},
    "upgrad": {"loss_balance": "upgrad"},
    "oversample+curriculum+rotation": {
        "hard_oversample": 3.0,
        "curriculum_ratio": 0.5,
        "rotation_period": 10,
    },
    "vision_first": {"vision_first_ratio": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-qwen2-vl")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="1 round of 4 steps (CI smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 4, 1

    import transformers

    from vlsweep import demo
    from vlsweep.config import TrainConfig
    from vlsweep.params import TrialParams
    from vlsweep.trials import load_base, load_data
    from vlsweep.trials.data import make_mixer
    from vlsweep.trials.engine import Trainer

    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    raw = {
        "model": {"name_or_path": args.model},
        "data": {"train": "builtin:demo/train", "val": "builtin:demo/val"},
        "budget": {"steps": args.steps, "batch_size": args.batch_size},
        "lora": {"vision": True, "projector": "full"},
    }
    cfg = demo.resolve(TrainConfig.model_validate(raw))
    data = load_data(cfg.data, tmp)
    base = load_base(cfg.model)
    rates: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    for r in range(args.rounds):
        # Each round starts one strategy later, so none is always first (a cold process).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fields = CASES[name]
            params = TrialParams(**fields)  # type: ignore[arg-type]
            trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base)
            trainer.attach()
            trainer.model.train()
            mixer = make_mixer(data.train, params, args.steps, 0)
            batches = [trainer.train_batch(mixer.batch(args.batch_size, s)) for s in range(1, args.steps + 1)]
            trainer.step(batches[0], 1)  # warm-up, not timed
            torch.manual_seed(0)
            t0 = time.perf_counter()
            for s, batch in enumerate(batches[1:], start=2):
                trainer.step(batch, s)
            seconds = time.perf_counter() - t0
            trainer.detach()
            rates[name].append((args.steps - 1) * args.batch_size / seconds)
    static = statistics.median(rates["static"])
    if args.quick:
        print("(--quick: one round of 3 timed steps, a smoke run; its ratios are noise, not a measurement)")
    print(f"{'strategy':32s} {'samples/s':>10s} {'vs static':>10s}")
    for name, got in rates.items():
        median = statistics.median(got)
        print(f"{name:32s} {median:10.1f} {median / static:10.2f}")


if __name__ == "__main__":
    main()
