"""A sweep driver that SIGKILLs itself at a chosen moment (tests/search/test_faults.py).

    python tests/support/fault_driver.py MOMENT CONFIG STORAGE_URL

MOMENT:
- ``running``: when the third trial reports its first evaluation short of the budget: that
  trial is mid-training (it cannot have finished), whatever the machine's speed;
- ``reporting``: in Ray Tune's result callback for the first full-budget evaluation, after
  the searcher saw the result and before the trial is told to Optuna;
- ``completed``: in the completion callback of the first trial, right after it was told.

Everything but the hook is the real sweep: ``run_sweep`` on a local Ray, as ``vlsweep
launch`` runs it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(Callback):
    def __init__(self, moment: str, budget_steps: int):
        self.moment, self.budget_steps = moment, budget_steps

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "cer" not in result:  # a training-curve row, not an evaluation
            return
        if (
            self.moment == "running"
            and trial.config["optuna_trial"] >= 2
            and result["steps"] < self.budget_steps
        ):
            _die()
        if self.moment == "reporting" and result["steps"] == self.budget_steps:
            _die()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.moment == "completed":
            _die()


def main() -> None:
    moment, config, url = sys.argv[1:4]
    cfg, base_dir = load_sweep_config(Path(config))
    run_sweep(cfg, base_dir, url, callbacks=[KillAt(moment, cfg.budget.steps)], log=print)
    sys.exit(f"the driver was not killed at {moment!r}")


if __name__ == "__main__":
    main()
