"""Does a base model ground? Its IoU on synthetic scenes next to two reference levels.

Why the learning-curve benchmark's IoU carries so little signal: this greedy-decodes
the base model (no fine-tune) on grounding scenes of each rendering style (``pretrain``
is what the builtin models were pretrained on, ``demo`` what the demo fine-tunes on)
and prints, per style:

- IoU and the share with IoU >= 0.5, scored by the trial engine's own evaluation;
- the IoU of each answer with the word of the scene it overlaps most, whatever its
  colour: high when the model finds words but not the asked-for colour;
- how many distinct answers it gave (a model that ignores the image repeats a few
  boxes it learnt by heart);
- the IoU of pointing at a randomly chosen word of the same scene with its exact box:
  what a model that finds words but not colours would score.

    python benchmarks/grounding_probe.py [--model builtin:tiny-qwen2-vl] [--samples 64] [--words 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any


def scenes(
    out: Path, style: str, n: int, seed: int, n_words: int | None = None
) -> tuple[list[Any], list[dict[str, list[int]]]]:
    """``n`` grounding records of ``style`` (images written under ``out``) and, for
    each, the boxes of every word in its scene."""
    from vlsweep.trials.data import Record
    from vlsweep.trials.synth import STYLES, grounding_scene

    rng = random.Random(seed)
    records, all_boxes = [], []
    for i in range(n):
        img, boxes = grounding_scene(rng, STYLES[style], n_words)
        target = rng.choice(sorted(boxes))
        path = out / f"{style}-{i:04d}.png"
        img.save(path)
        records.append(
            Record(image=path, task="grounding", size=img.size, query=f"the {target} text", box=boxes[target])
        )
        all_boxes.append(boxes)
    return records, all_boxes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-qwen2-vl")
    ap.add_argument("--samples", type=int, default=64, help="grounding scenes per style")
    ap.add_argument("--seed", type=int, default=5, help="data seed (the demo's own data is seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--words",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="words per scene (default: 2-3, as in the data)",
    )
    args = ap.parse_args()

    import torch

    from vlsweep.config import load_train_config
    from vlsweep.trials.engine import Trainer, TrialData
    from vlsweep.trials.metrics import iou
    from vlsweep.trials.modeling import load_base

    torch.set_num_threads(args.threads)
    # The demo's training settings (prompts, LoRA plan, eval batch size); only the model
    # and the data change.
    spec, _ = load_train_config(Path(__file__).parents[1] / "examples" / "demo-train.yaml")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"name_or_path": args.model})})
    base = load_base(spec.model)
    words = f"{args.words} word(s)" if args.words else "2-3 words"
    print(
        f"{args.model}, {args.samples} grounding scenes of {words} per style, "
        "greedy decoding of the base model"
    )
    print("| style | IoU | IoU >= 0.5 | IoU with any word | distinct answers | random word of the scene |")
    print("|---|---|---|---|---|---|")
    for style in ("pretrain", "demo"):
        with tempfile.TemporaryDirectory() as tmp:
            records, all_boxes = scenes(Path(tmp), style, args.samples, args.seed, args.words)
            trainer = Trainer(
                spec.params.to_trial_params(),
                spec.budget,
                spec=spec,
                # Nothing is trained: one train record names the task and is encoded once,
                # not all of them twice.
                data=TrialData(train=records[:1], val=records),
                base=base,
            )  # encodes the images here, before the folder goes
        metrics = trainer.evaluate(base.model)
        any_word = random_word = 0.0
        rng = random.Random(args.seed)
        for text, rec, enc, boxes in zip(
            trainer.last_predictions, records, trainer.val_enc, all_boxes, strict=True
        ):
            box = base.codec.decode(text, rec.size, enc.resized)
            any_word += max(iou(box, b) for b in boxes.values())
            random_word += iou(boxes[rng.choice(sorted(boxes))], rec.box)
        answers = Counter(trainer.last_predictions)
        n = len(records)
        print(
            f"| {style} | {metrics['iou']:.3f} | {metrics['acc_iou50']:.3f} | {any_word / n:.3f} | "
            f"{len(answers)} of {n} (most common x{answers.most_common(1)[0][1]}) | {random_word / n:.3f} |"
        )


if __name__ == "__main__":
    main()
