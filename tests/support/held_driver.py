"""A real sweep driver that holds still while a test looks at its local Ray
(tests/search/test_ray_auth.py).

    python tests/support/held_driver.py CONFIG STORAGE_URL DIR

At the first evaluation a trial reports, the driver writes DIR/ready (the GCS address of
the Ray it started, as JSON) and waits for DIR/release before going on: the moment is the
test's, not a guess at how long startup takes. Everything else is ``run_sweep`` as
``vlsweep launch`` runs it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep


class HoldAtFirstResult(Callback):
    def __init__(self, folder: Path):
        self.folder, self.held = folder, False

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.held:
            return
        import ray

        self.held = True
        ready = {"gcs_address": ray.get_runtime_context().gcs_address}
        (self.folder / "ready.tmp").write_text(json.dumps(ready))
        (self.folder / "ready.tmp").rename(self.folder / "ready")
        deadline = time.time() + 600
        while not (self.folder / "release").exists():
            if time.time() > deadline:
                sys.exit("held_driver: never released")
            time.sleep(0.2)


def main() -> None:
    config, url, folder = sys.argv[1:4]
    cfg, base_dir = load_sweep_config(Path(config))
    run_sweep(cfg, base_dir, url, callbacks=[HoldAtFirstResult(Path(folder))], log=print)


if __name__ == "__main__":
    main()
