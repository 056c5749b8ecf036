"""vlsweep's training loop against a minimal hand-written peft + torch loop.

Same model (a tiny Qwen2-VL, fresh LoRA each run), same batches, same number of steps;
both collate from the same pre-encoded samples. Rounds alternate A/B so that machine
noise hits both alike; the ratio of median samples/s is printed (target >= 0.95).

    python benchmarks/train_loop.py [--steps 60] [--rounds 5] [--batch-size 8] [--hidden 96]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 10 steps (CI smoke run)")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/doc_tables.py)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 10, 2

    import transformers
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from vlsweep.config import TrainConfig
    from vlsweep.demo.synth import write_dataset
    from vlsweep.demo.tiny import build_qwen2_vl
    from vlsweep.params import TrialParams
    from vlsweep.trials import TaskMixer, load_base, load_data
    from vlsweep.trials.engine import Trainer

    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model, processor = build_qwen2_vl(hidden=args.hidden, layers=2, vision_layers=2)
    model.save_pretrained(tmp / "ckpt")
    processor.save_pretrained(tmp / "ckpt")
    write_dataset(tmp / "data", n_train=128, n_val=2, seed=0)
    cfg = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(tmp / "ckpt")},
            "data": {"train": str(tmp / "data/train.jsonl"), "val": str(tmp / "data/val.jsonl")},
            "budget": {"steps": args.steps, "batch_size": args.batch_size},
            "lora": {"projector": "frozen"},
        }
    )
    data = load_data(cfg.data, tmp)
    params = TrialParams(lr_vision=1e-3, lr_projector=1e-3, lr_llm=1e-3, lora_r=8)
    base = load_base(cfg.model)
    mixer = TaskMixer([r.task for r in data.train], 1.0, seed=0)
    batches = [mixer.batch(args.batch_size) for _ in range(args.steps)]

    def vlsweep_loop() -> float:
        trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base)
        trainer.attach()
        trainer.model.train()
        trainer.step(trainer.train_batch(batches[0]))  # warm-up, not timed
        t0 = time.perf_counter()
        for idx in batches:
            trainer.step(trainer.train_batch(idx))
        elapsed = time.perf_counter() - t0
        trainer.detach()
        return args.steps * args.batch_size / elapsed

    def plain_loop() -> float:
        # What a user would write by hand: one LR, the model's own loss, clipping, cosine.
        trainer = Trainer(params, cfg.budget, cfg=cfg, data=data, base=base)  # for its encoded data
        peft_model = get_peft_model(
            base.model,
            PeftLoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            ),
        )
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
        sched = transformers.get_cosine_schedule_with_warmup(opt, args.steps // 10, args.steps)
        peft_model.train()

        def step(idx: list[int]) -> None:
            batch = trainer.train_batch(idx)
            batch.pop("task_ids")
            loss = peft_model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

        step(batches[0])
        t0 = time.perf_counter()
        for idx in batches:
            step(idx)
        elapsed = time.perf_counter() - t0
        peft_model.unload()
        return args.steps * args.batch_size / elapsed

    ours, plain = [], []
    for r in range(args.rounds):
        first, second = (vlsweep_loop, plain_loop) if r % 2 == 0 else (plain_loop, vlsweep_loop)
        a, b = first(), second()
        (ours if first is vlsweep_loop else plain).append(a)
        (plain if first is vlsweep_loop else ours).append(b)
    ratio = statistics.median(ours) / statistics.median(plain)
    n_params = sum(p.numel() for p in base.model.parameters())
    print(
        f"model: tiny Qwen2-VL hidden={args.hidden}, {n_params} params; batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}"
    )
    print(f"vlsweep loop samples/s: median {statistics.median(ours):.1f}  all {[round(x, 1) for x in ours]}")
    print(
        f"plain loop   samples/s: median {statistics.median(plain):.1f}  all {[round(x, 1) for x in plain]}"
    )
    print(f"ratio vlsweep/plain: {ratio:.3f} (target >= 0.95)")
    if args.json:
        summary = {
            "date": time.strftime("%Y-%m-%d"),
            "params": n_params,
            "steps": args.steps,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "vlsweep": ours,
            "plain": plain,
            "ratio": ratio,
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")


def doc_table(s: dict[str, Any]) -> str:
    """The docs' table (benchmarks/doc_tables.py)."""
    return (
        "| run | vlsweep samples/s (median) | plain samples/s (median) | ratio |\n|---|---|---|---|\n"
        f"| {s['date']}, {s['steps']} steps x {s['rounds']} rounds, batch {s['batch_size']}, "
        f"{s['params']:,} parameters | {statistics.median(s['vlsweep']):.1f} | "
        f"{statistics.median(s['plain']):.1f} | **{s['ratio']:.3f}** (target >= 0.95) |\n"
    )


if __name__ == "__main__":
    main()
