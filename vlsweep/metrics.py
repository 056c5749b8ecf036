"""The metrics a trial reports: one table of what each is, and how it is computed.

``METRICS`` is read by everything that needs to know a metric: config validation (which
names may be objectives or constraints, and their default direction), the check that
the validation data has the task a metric is measured on, the searcher (what it copies
onto the Optuna trial), the results (the hypervolume reference point), ``vlsweep
status`` (what each objective means and which way is better), and the report (axis
titles). The engine computes every metric with a ``compute`` function
from one ``Evaluation``. A new objective is one entry here plus its function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

Box = tuple[float, float, float, float]
# The "task" of a metric measured on the retention set (data.retain) rather than data.val.
RETAIN = "retain"
Direction = Literal["minimize", "maximize"]


@dataclass
class Evaluation:
    """One evaluation of a model on the validation set, per task: what metrics read."""

    ocr: list[tuple[str, str]] = field(default_factory=list)  # (prediction, reference text)
    grounding: list[tuple[Box | None, Box]] = field(default_factory=list)  # (parsed prediction, target)
    val_loss: dict[str, float] = field(default_factory=dict)  # teacher-forced loss per task
    # KL(base || fine-tuned) on the retention set (vlsweep.trials.forgetting); None when the
    # run has no retention set.
    forgetting: float | None = None

    def has(self, task: str | None) -> bool:
        """Whether the evaluation holds samples of ``task`` (None: any evaluation does;
        ``retain``: the retention set's)."""
        if task == RETAIN:
            return self.forgetting is not None
        samples = {"ocr": self.ocr, "grounding": self.grounding}
        return task is None or bool(samples.get(task))

    @cached_property
    def grounding_scores(self) -> dict[str, float]:
        return grounding_scores([p for p, _ in self.grounding], [t for _, t in self.grounding])


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    # The task whose validation samples it is measured on (None: any run has it).
    task: str | None
    # Its worst possible value (CER 1, IoU 0), which bounds the hypervolume reference point;
    # None when unbounded (a loss, a duration).
    worst: float | None
    # How the engine computes it from an evaluation; None for what the engine times.
    compute: Callable[[Evaluation], float] | None
    label: str
    # Whether a sweep may optimize it (an objective or a constraint), or only record it.
    objective: bool = True
    # Whether each trial records it as a user attr. cer and iou are the study's first two
    # values on every trial, so they are not attrs too.
    attr: bool = True


def corpus_cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Sum of edit distances over sum of reference lengths (corpus-level, not a mean of rates).

    An empty prediction costs the whole reference. With no reference characters at all the
    rate is undefined; we return 0.0 when the predictions are empty too, else 1.0.
    """
    from rapidfuzz.distance import Levenshtein

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


def _cer(e: Evaluation) -> float:
    return corpus_cer([p for p, _ in e.ocr], [r for _, r in e.ocr])


def _grounding(key: str) -> Callable[[Evaluation], float]:
    return lambda e: e.grounding_scores[key]


def _val_loss(task: str) -> Callable[[Evaluation], float]:
    return lambda e: e.val_loss[task]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("cer", "minimize", "ocr", 1.0, _cer, "OCR character error rate", attr=False),
        Metric("iou", "maximize", "grounding", 0.0, _grounding("iou"), "localization IoU", attr=False),
        Metric("acc_iou50", "maximize", "grounding", 0.0, _grounding("acc_iou50"), "accuracy at IoU >= 0.5"),
        Metric(
            "parse_fail_rate", "minimize", "grounding", 1.0, _grounding("parse_fail_rate"), "unparsed boxes"
        ),
        Metric("val_loss_ocr", "minimize", "ocr", None, _val_loss("ocr"), "OCR validation loss"),
        Metric(
            "val_loss_grounding",
            "minimize",
            "grounding",
            None,
            _val_loss("grounding"),
            "grounding validation loss",
        ),
        Metric(
            "forgetting",
            "minimize",
            RETAIN,
            None,
            lambda e: e.forgetting or 0.0,
            "KL(base || fine-tuned) on the retention set",
        ),
        Metric("train_seconds", "minimize", None, None, None, "training seconds"),
        # Recorded on each trial, never optimized.
        Metric("iou_se", "minimize", "grounding", None, _grounding("iou_se"), "IoU standard error", False),
        Metric("eval_seconds", "minimize", None, None, None, "evaluation seconds", False),
        # The trial process's CPU time, every thread (what a CPU trial costs; on a GPU the
        # host's share only).
        Metric("cpu_seconds", "minimize", None, None, None, "CPU seconds of the trial", False),
        Metric("samples_per_second", "maximize", None, None, None, "training samples per second", False),
        Metric("peak_gpu_memory_gb", "minimize", None, None, None, "peak GPU memory, GiB", False),
    )
}
# The names a sweep may optimize or constrain.
OBJECTIVES = tuple(n for n, m in METRICS.items() if m.objective)


def better(direction: str) -> str:
    """``lower is better`` or ``higher is better``, for an Optuna direction."""
    return f"{'lower' if direction == 'minimize' else 'higher'} is better"


def legend(names: Sequence[str], directions: Sequence[str]) -> list[str]:
    """One ``name: label, lower is better`` line per known metric, for tables and plots
    that show the names alone."""
    return [
        f"{n}: {m.label}, {better(d)}"
        for n, d in zip(names, directions, strict=True)
        if (m := METRICS.get(n)) is not None
    ]


def compute(evaluation: Evaluation) -> dict[str, float]:
    """Every metric the evaluation has the samples for, in table order."""
    return {
        name: m.compute(evaluation)
        for name, m in METRICS.items()
        if m.compute is not None and evaluation.has(m.task)
    }
