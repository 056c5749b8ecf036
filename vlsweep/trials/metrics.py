"""The two objectives and their companions: corpus CER, IoU, parse failures."""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

from vlsweep.trials.codecs import Box


def corpus_cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Sum of edit distances over sum of reference lengths (corpus-level, not a mean of rates).

    An empty prediction costs the whole reference. With no reference characters at all the
    rate is undefined; we return 0.0 when the predictions are empty too, else 1.0.
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    edits = sum(Levenshtein.distance(p, r) for p, r in zip(predictions, references, strict=True))
    total = sum(len(r) for r in references)
    if total == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / total


def iou(a: Box | None, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; None (unparsed) scores 0."""
    if a is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_scores(predicted: Sequence[Box | None], targets: Sequence[Box]) -> dict[str, float]:
    """Mean IoU (unparsed = 0), its standard error over the samples, accuracy at IoU >= 0.5
    and the parse failure rate."""
    if not targets:
        return {"iou": 0.0, "iou_se": 0.0, "acc_iou50": 0.0, "parse_fail_rate": 0.0}
    ious = [iou(p, t) for p, t in zip(predicted, targets, strict=True)]
    mean = sum(ious) / len(ious)
    var = sum((v - mean) ** 2 for v in ious) / (len(ious) - 1) if len(ious) > 1 else 0.0
    return {
        "iou": mean,
        "iou_se": (var / len(ious)) ** 0.5,
        "acc_iou50": sum(v >= 0.5 for v in ious) / len(ious),
        "parse_fail_rate": sum(p is None for p in predicted) / len(predicted),
    }
