"""What a sweep waits for is said: pending apart from running, and a trial no node can hold
is an error before any trial (or, with an autoscaler, a visible wait). Real local Ray."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import optuna
import pytest

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.errors import SweepInterrupted, UserInputError
from vlsweep.search import backend, callbacks
from vlsweep.search.backend import check_trial_fits
from vlsweep.search.callbacks import progress_line
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import STOP_ATTR, run_sweep


def _study_with_one_complete() -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_metric_names(["cer", "iou"])
    study.add_trial(
        optuna.trial.create_trial(
            params={}, distributions={}, values=[0.1, 0.4], user_attrs={"ray_trial_id": "a"}
        )
    )
    study.ask()  # asked, so RUNNING in Optuna, whether or not Ray has started it
    study.ask()
    return study


def test_progress_line_tells_pending_from_running():
    study = _study_with_one_complete()
    tune_trials = [SimpleNamespace(status=s) for s in ("TERMINATED", "RUNNING", "PENDING")]
    line = progress_line(study, ["cer", "iou"], time.time(), 16, tune_trials, "waiting for resources: x")
    assert (
        "1/16 trials done: 1 complete, 0 pruned, 0 failed, 1 running, 1 pending (waiting for resources: x)"
        in (line)
    )
    # Without Ray's view, Optuna's RUNNING is all there is.
    assert "2 running" in progress_line(study, ["cer", "iou"], time.time(), 16)
    # Nothing pending: no reason shown.
    running = [SimpleNamespace(status="RUNNING")] * 2
    quiet = progress_line(study, ["cer", "iou"], time.time(), 16, running, "x")
    assert "2 running, 0 pending |" in quiet and "(x)" not in quiet, quiet
    # A reproducible sweep holding a free slot until an older trial ends says so.
    held = progress_line(study, ["cer", "iou"], time.time(), 16, running[:1], "", [3])
    assert "1 running, 0 pending, 1 slot held (search.reproducible: trial 3 must end first) |" in held


def test_a_node_holds_as_many_trials_as_ray_would_place_on_it():
    # Ray counts resources in units of 1e-4; float floor division would say 1.0 // 0.2 = 4.
    assert backend._fits_times({"CPU": 2.0, "GPU": 1.0}, {"CPU": 0.1, "GPU": 0.2}) == 5
    assert backend._fits_times({"CPU": 16.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 0.5}) == 2
    assert backend._fits_times({"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}) == 0  # no GPU key at all


def _cfg(tmp_path, tiny_checkpoint, demo_data, **resources):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=2)
    edit_yaml(path, resources=resources)
    return load_sweep_config(path)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("resources", "field", "has"),
    [
        ({"gpus_per_trial": 1}, "resources.gpus_per_trial", "0 GPUs"),
        ({"cpus_per_trial": 3}, "resources.cpus_per_trial", "2 CPUs"),
        ({"memory_gb_per_trial": 4096}, "resources.memory_gb_per_trial", "GiB memory"),
    ],
)
def test_a_trial_no_node_can_hold_is_an_error_naming_the_request(
    ray_local, tmp_path, tiny_checkpoint, demo_data, resources, field, has
):
    cfg, _ = _cfg(tmp_path, tiny_checkpoint, demo_data, **resources)
    with pytest.raises(UserInputError) as err:
        check_trial_fits(cfg, log=lambda _m: None)
    (line,) = err.value.problems
    assert line.startswith(f"{field}: each trial asks for "), line
    assert "no node of the Ray cluster has that (1 node: " in line and has in line, line
    # The same request with an autoscaler: said, and waited for.
    logged: list[str] = []
    cfg.ray.autoscaling = True
    assert check_trial_fits(cfg, log=logged.append) is True
    assert logged and "the cluster's autoscaler may add such a node" in logged[0]


@pytest.mark.integration
def test_a_request_that_fits_passes_and_a_local_ray_has_no_autoscaler(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    cfg, _ = _cfg(tmp_path, tiny_checkpoint, demo_data, cpus_per_trial=2)
    assert check_trial_fits(cfg, log=lambda _m: None) is False
    assert backend.autoscaling(cfg) is False


@pytest.mark.integration
def test_an_impossible_sweep_exits_before_any_trial_and_keeps_no_study(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    cfg, base_dir = _cfg(tmp_path, tiny_checkpoint, demo_data, gpus_per_trial=1)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with pytest.raises(UserInputError, match=r"resources.gpus_per_trial: each trial asks for 1 CPU, 1 GPU"):
        run_sweep(cfg, base_dir, url, log=lambda _m: None)
    assert "t" not in optuna.get_all_study_names(url)
    assert not (tmp_path / "runs" / "trial-0000").exists()


@pytest.mark.integration
def test_trials_waiting_for_an_autoscaler_say_so_while_they_wait(
    ray_local, tmp_path, tiny_checkpoint, demo_data, monkeypatch
):
    """Ray keeps a trial it cannot place PENDING; the progress line says what it waits for.
    The test stops the sweep through the study once it has read that line."""
    monkeypatch.setattr(callbacks, "PROGRESS_EVERY_SECONDS", 0.5)
    cfg, base_dir = _cfg(tmp_path, tiny_checkpoint, demo_data, gpus_per_trial=1)
    cfg.ray.autoscaling = True
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    lines: list[str] = []
    seen = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if "pending (waiting for resources" in line and not seen.is_set():
            seen.set()
            optuna.load_study(study_name="t", storage=url).set_user_attr(STOP_ATTR, {"host": "test"})

    with pytest.raises(SweepInterrupted):
        run_sweep(cfg, base_dir, url, log=log)
    waiting = next(x for x in lines if "pending (waiting" in x)
    assert "0 running, 2 pending (waiting for resources: each asks for 1 CPU, 1 GPU, free now" in waiting
    assert "0 GPUs; the autoscaler may add nodes)" in waiting, waiting
    assert any("the cluster's autoscaler may add such a node" in x for x in lines)


@pytest.mark.integration
def test_trials_the_cluster_can_hold_are_never_said_to_wait_for_resources(
    ray_local, tmp_path, tiny_checkpoint, demo_data, monkeypatch
):
    """While Ray starts trials it has already reserved their CPUs, so "free now 0 CPUs" would
    be true and misleading: trials that fit are "starting", not waiting."""
    monkeypatch.setattr(callbacks, "PROGRESS_EVERY_SECONDS", 0.2)
    monkeypatch.setattr(callbacks, "PROGRESS_MIN_SECONDS", 0.0)
    cfg, base_dir = _cfg(tmp_path, tiny_checkpoint, demo_data, cpus_per_trial=1)
    lines: list[str] = []
    run_sweep(cfg, base_dir, f"sqlite:///{tmp_path / 'db.sqlite'}", log=lines.append)
    progress = [x for x in lines if "trials done" in x]
    assert progress and not [x for x in progress if "waiting for resources" in x], progress


@pytest.mark.parametrize(("types", "adds"), [(["", ""], False), (["headgroup", "gpu-group"], True)])
def test_the_v2_autoscaler_counts_as_adding_nodes_only_when_its_nodes_carry_node_types(
    monkeypatch, types, adds
):
    """Under the v2 autoscaler, hand-started nodes carry no node type name (its read-only
    mode) and the nodes of an autoscaler's config carry theirs (KubeRay's group names):
    the flag alone does not make a fixed cluster an autoscaling one."""
    from types import SimpleNamespace as NS

    import ray.autoscaler.v2.sdk as sdk
    import ray.autoscaler.v2.utils as v2
    import ray.experimental.internal_kv as kv
    import ray.tune.execution.cluster_info as cluster_info

    monkeypatch.setattr(cluster_info, "_is_ray_cluster", lambda: False)
    monkeypatch.setattr(v2, "is_autoscaler_v2", lambda fetch_from_server=False: True)
    monkeypatch.setattr(kv, "internal_kv_get_gcs_client", lambda: "gcs")
    state = NS(node_states=[NS(ray_node_type_name=t) for t in types])
    monkeypatch.setattr(sdk, "get_cluster_resource_state", lambda gcs: state if gcs == "gcs" else None)
    cfg = SimpleNamespace(ray=SimpleNamespace(autoscaling=None))
    assert backend.autoscaling(cfg) is adds
