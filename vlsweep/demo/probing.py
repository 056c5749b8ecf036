"""Does a base model read and ground, untrained? The probe a builtin recipe is held to.

``probe(model)`` greedy-decodes the model on fresh OCR strips and grounding scenes of one
rendering style (by default ``pretrain``, the style the builtin models were pretrained
on, with text boxes: the task they were built for) and scores the answers with the trial
engine's own evaluation (``vlsweep.trials.score``); ``Recipe.meets`` compares the figures
with a recipe's thresholds. ``benchmarks/grounding_probe.py`` reports more about the answers.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

# Fresh scenes, never the demo's own data (seed 0).
PROBE_SEED = 5
PROBE_SAMPLES = 64


def ocr_records(out: Path, style: str, samples: int, rng: random.Random) -> list[Any]:
    """``samples`` OCR strips of ``style`` drawn from ``rng``, images written under ``out``."""
    from vlsweep.demo.synth import STYLES, ocr_sample
    from vlsweep.trials import Record

    records = []
    for i in range(samples):
        img, text = ocr_sample(rng, STYLES[style])
        path = out / f"{style}-ocr-{i:04d}.png"
        img.save(path)
        records.append(Record(image=path, task="ocr", size=img.size, text=text))
    return records


def probe_records(out: Path, style: str, samples: int, seed: int) -> list[Any]:
    """``samples`` OCR strips and ``samples`` grounding scenes (text boxes) of ``style``,
    images written under ``out``."""
    from vlsweep.demo.synth import STYLES, grounding_sample
    from vlsweep.trials import Record

    rng = random.Random(seed)
    records = ocr_records(out, style, samples, rng)
    for i in range(samples):
        img, query, box = grounding_sample(rng, STYLES[style], "text")
        path = out / f"{style}-grounding-{i:04d}.png"
        img.save(path)
        records.append(Record(image=path, task="grounding", size=img.size, query=query, box=box))
    return records


def probe(
    model: str | Path, *, style: str = "pretrain", samples: int = PROBE_SAMPLES, seed: int = PROBE_SEED
) -> dict[str, Any]:
    """CER, IoU (with its standard error) and parse-failure rate of ``model`` (a checkpoint
    directory or Hub id), untrained, on fresh scenes of ``style``."""
    from vlsweep.config import TrainConfig
    from vlsweep.trials import load_base, score

    cfg = TrainConfig.model_validate(
        {"model": {"name_or_path": str(model), "device": "cpu"}, "data": {"train": "-", "val": "-"}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        records = probe_records(Path(tmp), style, samples, seed)
        metrics, _ = score(cfg, records, base=load_base(cfg.model))
    return {
        "style": style,
        "samples": samples,
        "seed": seed,
        **{k: round(metrics[k], 4) for k in ("cer", "iou", "iou_se", "parse_fail_rate")},
    }
