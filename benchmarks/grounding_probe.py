"""Does a base model read and ground? Its CER and IoU on fresh synthetic scenes, untrained.

This greedy-decodes the base model (no fine-tune) on OCR and grounding scenes of each
rendering style (``pretrain`` is what the builtin models were pretrained on, ``demo``
what the demo fine-tunes on) and reports, per style:

- CER on OCR scenes, and IoU and the share with IoU >= 0.5 on grounding scenes, scored
  by the trial engine's own evaluation, with the standard error of the mean IoU;
- the IoU of each answer with the word of the scene it overlaps most, whatever its
  colour: high when the model finds words but not the asked-for one;
- how many distinct answers it gave (a model that ignores the image repeats a few
  boxes it learnt by heart);
- the IoU of pointing at a randomly chosen word of the same scene with its exact box:
  what a model that finds words but not colours would score.

    python benchmarks/grounding_probe.py [--model builtin:tiny-qwen2-vl] [--samples 128] [--words 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any


def scenes(
    out: Path, style: str, n: int, seed: int, n_words: int | None = None
) -> tuple[list[Any], list[dict[str, list[int]]]]:
    """``n`` grounding records of ``style`` (images written under ``out``) and, for
    each, the boxes of every word in its scene."""
    from vlsweep.demo.synth import STYLES, grounding_scene
    from vlsweep.trials import Record

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


def probe(model: str, samples: int, seed: int, words: int | None) -> dict[str, Any]:
    import torch  # noqa: F401  (loaded before transformers, as the engine does)

    from vlsweep import demo
    from vlsweep.config import load_train_config
    from vlsweep.demo.probing import ocr_records
    from vlsweep.metrics import iou
    from vlsweep.trials import TrialData, load_base
    from vlsweep.trials.engine import Trainer  # the engine's internals: this probe scores without training

    # The demo's training settings (prompts, LoRA plan, eval batch size); only the model
    # and the data change.
    cfg, _ = load_train_config(Path(__file__).parents[1] / "examples" / "demo-train.yaml")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": model})})
    cfg = demo.resolve(cfg)
    base = load_base(cfg.model)
    out: dict[str, Any] = {"model": model, "samples": samples, "words": words or "2-3", "styles": {}}
    for style in ("pretrain", "demo"):
        with tempfile.TemporaryDirectory() as tmp:
            records, all_boxes = scenes(Path(tmp), style, samples, seed, words)
            ocr = ocr_records(Path(tmp), style, samples, random.Random(seed + 1))
            trainer = Trainer(
                cfg.params,
                cfg.budget,
                cfg=cfg,
                # Nothing is trained: one train record names each task and is encoded
                # once, not all of them twice.
                data=TrialData(train=[records[0], ocr[0]], val=records + ocr),
                base=base,
            )  # encodes the images here, before the folder goes
        metrics = trainer.evaluate(base.model)
        n = len(records)
        ious, any_word, random_word = [], 0.0, 0.0
        rng = random.Random(seed)
        answers = trainer.last_predictions[:n]
        for text, rec, enc, boxes in zip(answers, records, trainer.val_enc[:n], all_boxes, strict=True):
            box = base.codec.decode(text, rec.size, enc.resized)
            ious.append(iou(box, rec.box))
            any_word += max(iou(box, b) for b in boxes.values())
            random_word += iou(boxes[rng.choice(sorted(boxes))], rec.box)
        counts = Counter(answers)
        out["styles"][style] = {
            "cer": round(metrics["cer"], 4),
            "iou": round(metrics["iou"], 4),
            "iou_stderr": round(statistics.stdev(ious) / n**0.5, 4) if n > 1 else None,
            "acc_iou50": round(metrics["acc_iou50"], 4),
            "iou_any_word": round(any_word / n, 4),
            "distinct_answers": len(counts),
            "most_common_answer_count": counts.most_common(1)[0][1],
            "iou_random_word": round(random_word / n, 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-qwen2-vl")
    ap.add_argument("--samples", type=int, default=128, help="OCR and grounding scenes per style")
    ap.add_argument("--seed", type=int, default=5, help="data seed (the demo's own data is seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--words",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="words per scene (default: 2-3, as in the data)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    result = probe(args.model, args.samples, args.seed, args.words)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.model}, {args.samples} OCR and {args.samples} grounding scenes ({result['words']} words) "
        "per style, greedy decoding of the base model"
    )
    print("| style | CER | IoU (± s.e.) | IoU >= 0.5 | IoU with any word | distinct answers | random word |")
    print("|---|---|---|---|---|---|---|")
    for style, r in result["styles"].items():
        print(
            f"| {style} | {r['cer']:.3f} | {r['iou']:.3f} ± {r['iou_stderr']:.3f} | {r['acc_iou50']:.3f} | "
            f"{r['iou_any_word']:.3f} | {r['distinct_answers']} of {args.samples} "
            f"(most common x{r['most_common_answer_count']}) | {r['iou_random_word']:.3f} |"
        )


if __name__ == "__main__":
    main()
