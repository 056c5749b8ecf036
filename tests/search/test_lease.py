"""The driver's lease on a study (vlsweep.search.lease): what lets `vlsweep resume` take
over from a driver lost with its machine (a lost head), and keeps two drivers apart."""

from __future__ import annotations

import time

import optuna
import pytest

from vlsweep.errors import UserInputError
from vlsweep.search import lease


def _held_by(host: str, pid: int, age: float) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr(
        "driver", {"id": f"{host}:{pid}:0", "host": host, "pid": pid, "heartbeat": time.time() - age}
    )
    return study


def test_a_driver_on_another_machine_holds_the_study_until_its_heartbeat_is_60_s_old():
    fresh = _held_by("head-1", 4242, age=lease.HEARTBEAT_STALE_SECONDS - 5)
    with pytest.raises(
        UserInputError, match=r"being run by pid 4242 on head-1 \(heartbeat 55s ago\); wait for it"
    ):
        lease.claim_driver(fresh)
    stale = _held_by("head-1", 4242, age=lease.HEARTBEAT_STALE_SECONDS + 1)
    driver = lease.claim_driver(stale)
    assert stale.user_attrs["driver"]["id"] == driver
    lease.release_driver(stale, driver)
    assert stale.user_attrs["driver"] is None


def test_a_dead_driver_on_this_machine_is_known_gone_at_once():
    import socket
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    study = _held_by(socket.gethostname(), int(gone.stdout), age=1)
    assert lease.claim_driver(study)
