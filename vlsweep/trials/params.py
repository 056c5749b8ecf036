"""TrialParams: the one object that crosses from the search to the trial engine.

It holds one point of the search space, already valid: the engine never re-checks
ranges that the sampler guarantees, but a hand-written ``vlsweep train`` config goes
through the same checks here, so a bad value fails before any compute is spent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

TASKS = ("ocr", "grounding")


@dataclass(frozen=True, kw_only=True)
class TrialParams:
    """Hyperparameters of one short fine-tune (names as in the study, DESIGN.md section 2)."""

    lr_vision: float = 2e-4
    lr_projector: float = 1e-3
    lr_llm: float = 1e-3
    lora_r: int = 8
    lora_alpha_ratio: float = 2.0
    lora_dropout: float = 0.0
    # Loss weight of the OCR task; grounding gets 1 - weight_ocr. With more than two tasks,
    # ``task_weights`` (a point on the simplex) is used instead.
    weight_ocr: float = 0.5
    task_weights: dict[str, float] | None = None
    mix_temperature: float = 1.0
    warmup_ratio: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for name in ("lr_vision", "lr_projector", "lr_llm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.lora_r, int) and self.lora_r >= 1):
            problems.append(f"lora_r must be an integer >= 1, got {self.lora_r!r}")
        if not (math.isfinite(self.lora_alpha_ratio) and self.lora_alpha_ratio > 0):
            problems.append(f"lora_alpha_ratio must be > 0, got {self.lora_alpha_ratio!r}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not 0 <= self.weight_ocr <= 1:
            problems.append(f"weight_ocr must be in [0, 1], got {self.weight_ocr!r}")
        if not (math.isfinite(self.mix_temperature) and self.mix_temperature > 0):
            problems.append(f"mix_temperature must be > 0, got {self.mix_temperature!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.task_weights is not None:
            weights = self.task_weights
            if any((not math.isfinite(w)) or w < 0 for w in weights.values()):
                problems.append(f"task_weights must all be >= 0, got {weights}")
            elif abs(sum(weights.values()) - 1) > 1e-6:
                problems.append(f"task_weights must sum to 1 (a point on the simplex), got {weights}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def lora_alpha(self) -> float:
        return self.lora_alpha_ratio * self.lora_r

    def weights_for(self, tasks: list[str]) -> dict[str, float]:
        """Loss weight per task present in the data."""
        if self.task_weights is not None:
            missing = [t for t in tasks if t not in self.task_weights]
            if missing:
                raise ValueError(f"task_weights has no weight for task(s) {missing}")
            return {t: self.task_weights[t] for t in tasks}
        if set(tasks) <= set(TASKS):
            weights = {"ocr": self.weight_ocr, "grounding": 1 - self.weight_ocr}
            return {t: weights[t] for t in tasks}
        raise ValueError(f"tasks {tasks} need task_weights (weight_ocr covers ocr + grounding only)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["task_weights"]:
            out.pop("task_weights")
        if not out["extra"]:
            out.pop("extra")
        return out
