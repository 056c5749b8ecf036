"""The driver's lease on a study: one driver at a time, kept alive by a heartbeat, so that
a second ``vlsweep launch`` or ``resume`` of a running sweep is refused and one of a dead
driver's sweep goes ahead.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import optuna

from vlsweep.errors import UserInputError

# A driver that has not written its heartbeat for this long is considered gone.
HEARTBEAT_STALE_SECONDS = 60.0


def claim_driver(study: optuna.Study, *, force: bool = False) -> str:
    """Record this process as the sweep's driver; refuse if another one is alive."""
    info = study.user_attrs.get("driver")
    if info and not force:
        age = time.time() - float(info.get("heartbeat", 0))
        if age < HEARTBEAT_STALE_SECONDS and _maybe_alive(info):
            raise UserInputError(
                f"study {study.study_name!r} is being run by pid {info.get('pid')} on {info.get('host')} "
                f"(heartbeat {age:.0f}s ago); wait for it, or stop it first"
            )
    driver_id = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
    heartbeat(study, driver_id)
    return driver_id


def _maybe_alive(info: dict[str, Any]) -> bool:
    """False when the recorded driver ran on this host and its process is gone."""
    if info.get("host") != socket.gethostname():
        return True  # another machine: only the heartbeat can tell
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def heartbeat(study: optuna.Study, driver_id: str) -> None:
    host, pid, _ = driver_id.split(":")
    study.set_user_attr("driver", {"id": driver_id, "host": host, "pid": int(pid), "heartbeat": time.time()})


def release_driver(study: optuna.Study, driver_id: str) -> None:
    info = study.user_attrs.get("driver")
    if info and info.get("id") == driver_id:
        study.set_user_attr("driver", None)
