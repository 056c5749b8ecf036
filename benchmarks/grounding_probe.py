"""Does a base model ground? Its IoU on synthetic scenes next to two reference levels.

Why the learning-curve benchmark's IoU carries so little signal: this greedy-decodes
the base model (no fine-tune) on grounding scenes of each rendering style (``pretrain``
is what the builtin models were pretrained on, ``demo`` what the demo fine-tunes on)
and prints, per style:

- IoU and the share with IoU >= 0.5, scored by the trial engine's own evaluation;
- how many distinct answers it gave (a model that ignores the image repeats a few
  boxes it learnt by heart);
- the IoU of pointing at a randomly chosen word of the same scene with its exact box,
  estimated on 2,000 fresh scenes: what a model that finds words but not colours
  would score.

    python benchmarks/grounding_probe.py [--model builtin:tiny-qwen2-vl] [--samples 64]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path


def random_word_iou(style: str, n: int = 2000, seed: int = 7) -> float:
    from vlsweep.trials.metrics import iou
    from vlsweep.trials.synth import STYLES, grounding_scene

    rng = random.Random(seed)
    total = 0.0
    for _ in range(n):
        _, boxes = grounding_scene(rng, STYLES[style])
        names = sorted(boxes)
        total += iou(boxes[rng.choice(names)], boxes[rng.choice(names)])
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-qwen2-vl")
    ap.add_argument("--samples", type=int, default=64, help="grounding scenes per style")
    ap.add_argument("--seed", type=int, default=5, help="data seed (the demo's own data is seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from vlsweep.config import load_train_config
    from vlsweep.trials.data import load_records
    from vlsweep.trials.engine import Trainer, TrialData
    from vlsweep.trials.modeling import load_base
    from vlsweep.trials.synth import write_dataset

    torch.set_num_threads(args.threads)
    # The demo's training settings (prompts, LoRA plan, eval batch size); only the model
    # and the data change.
    spec, _ = load_train_config(Path(__file__).parents[1] / "examples" / "demo-train.yaml")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"name_or_path": args.model})})
    base = load_base(spec.model)
    print(f"{args.model}, {args.samples} grounding scenes per style, greedy decoding of the base model")
    print("| style | IoU | IoU >= 0.5 | distinct answers | random word of the scene |")
    print("|---|---|---|---|---|")
    for style in ("pretrain", "demo"):
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_dataset(
                Path(tmp), n_train=2, n_val=args.samples, seed=args.seed, style=style, ocr_fraction=0.0
            )
            records, problems = load_records(paths["val"])
            assert not problems, problems
            trainer = Trainer(
                spec.params.to_trial_params(),
                spec.budget,
                spec=spec,
                data=TrialData(train=records, val=records),
                base=base,
            )
        metrics = trainer.evaluate(base.model)
        answers = Counter(trainer.last_predictions)
        print(
            f"| {style} | {metrics['iou']:.3f} | {metrics['acc_iou50']:.3f} | "
            f"{len(answers)} of {args.samples} (most common x{answers.most_common(1)[0][1]}) | "
            f"{random_word_iou(style):.3f} |"
        )


if __name__ == "__main__":
    main()
