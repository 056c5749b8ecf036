"""Fixtures of the sweep tests: a local Ray, and the study storages they run against."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray started as a sweep starts its own: token auth on, loopback only."""
    from vlsweep.search.backend import local_ray

    with local_ray(num_cpus=2):
        yield


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    from tests.support.postgres import fresh_pg_database

    return fresh_pg_database()


@pytest.fixture
def faults_record():
    """Record what a fault test's sweep ended with, as a row of docs/benchmarks/faults.json:
    written to the file ``VLSWEEP_FAULTS_JSON`` names (the fault tests' runs make that file;
    nothing is written without it). Each fault's row replaces its last one."""

    def record(fault: str, study, *, planned: int, resumed_from_step: int | None = None) -> dict:
        from collections import Counter

        from optuna.trial import TrialState

        from vlsweep import outcomes

        trials = study.get_trials(deepcopy=False)
        ray_ids = Counter(t.user_attrs["ray_trial_id"] for t in trials if "ray_trial_id" in t.user_attrs)
        finished = outcomes.finished_toward_trials(trials)
        row = {
            "fault": fault,
            "trials": planned,
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("requeued") for t in trials),
            # Lost with a driver and run again as a new trial (counted once, by its re-run).
            "requeued": sum(bool(t.user_attrs.get("requeued")) for t in trials),
            "lost": max(0, planned - finished),
            "duplicated": sum(n - 1 for n in ray_ids.values()) + max(0, finished - planned),
            "left_running": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
            "resumed_from_step": resumed_from_step,
        }
        out = os.environ.get("VLSWEEP_FAULTS_JSON")
        if out:
            import json
            from pathlib import Path

            path = Path(out)
            rows = json.loads(path.read_text())["faults"] if path.is_file() else []
            rows = [r for r in rows if r["fault"] != fault] + [row]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"faults": rows}, indent=2) + "\n")
        return row

    return record


@pytest.fixture(scope="session")
def cluster_token(tmp_path_factory: pytest.TempPathFactory):
    """The token file the test clusters' nodes and commands run with (ray_nodes.ENV), in a
    folder of the session's (pytest makes it private to the user)."""
    from tests.support import ray_nodes

    yield ray_nodes.use_token(tmp_path_factory.mktemp("ray-token"))
    ray_nodes.ENV.clear()
