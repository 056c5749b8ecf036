"""The trial engine: one short multi-task LoRA fine-tune of a VLM, scored by CER and IoU.

It imports neither Ray nor Optuna; the search drives it through ``run_trial`` and a plain
``report(step, metrics)`` callback. Heavy imports stay inside the submodules.
"""

from __future__ import annotations

from vlsweep.trials.params import TrialParams

__all__ = ["TrialParams", "run_trial"]


def __getattr__(name: str):  # noqa: ANN202 - lazy re-export keeps `import vlsweep.trials` light
    if name == "run_trial":
        from vlsweep.trials.engine import run_trial

        return run_trial
    raise AttributeError(name)
