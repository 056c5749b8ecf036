"""Fault injection: a sweep survives crashes, bad trials and a database restart, and loses
no finished trial. Real local Ray, real SQLite and PostgreSQL, the tiny checkpoint.

Run with ``pytest -m fault`` (CI runs it with the PostgreSQL server of .ci/postgres.sh).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState
from ray.tune import Callback

from tests.support.postgres import fresh_pg_database
from tests.support.sweeps import check_invariants, edit_yaml, sweep_cfg, vlsweep
from vlsweep import artifacts
from vlsweep.errors import SweepFailed
from vlsweep.search.config import load_sweep_config
from vlsweep.search.sweep import run_sweep
from vlsweep.search.worker import CHECKPOINT_KEY

pytestmark = pytest.mark.fault

DRIVER = Path(__file__).parents[1] / "support" / "fault_driver.py"


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="t", storage=url).get_trials()


def _alive(procs: list[list[float]], grace: float = 20.0) -> list[str]:
    """Recorded (pid, create_time) processes still running after ``grace`` seconds (Ray's
    processes exit asynchronously after ``ray.shutdown``)."""
    deadline = time.time() + grace
    while True:
        out = []
        for pid, created in procs:
            try:
                proc = psutil.Process(int(pid))
                if abs(proc.create_time() - created) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {' '.join(proc.cmdline())[:80]}")
            except psutil.NoSuchProcess:
                pass
        if not out or time.time() > deadline:
            return out
        time.sleep(0.5)


def _run_watching_children(proc: subprocess.Popen, timeout: float) -> tuple[str, list[list[float]]]:
    """Wait for ``proc``; returns its output and every descendant process seen meanwhile."""
    seen: dict[int, float] = {}
    deadline = time.time() + timeout

    def watch() -> None:
        while proc.poll() is None and time.time() < deadline:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate(timeout=timeout)
    watcher.join()
    return out, [[pid, created] for pid, created in seen.items()]


def _ray_trial_dirs(runs: Path) -> dict[str, int]:
    """Ray trial id -> Optuna trial number, from the trial directories Ray Tune wrote."""
    out = {}
    for d in runs.glob("ray/*/trial-*"):
        _, number, ray_id = d.name.split("-", 2)
        out[ray_id] = int(number)
    return out


def _check_resumed(url: str, runs: Path, budget: int, before: dict[int, list[float]]) -> None:
    """After resume: budget reached, nothing RUNNING, no finished trial lost or doubled, one
    Optuna trial per Ray trial (and the other way round), lost trials re-run once."""
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    counted = [t for t in trials if "ray_trial_id" in t.user_attrs and not t.user_attrs.get("requeued")]
    assert len(counted) == budget, [(t.number, t.state, t.user_attrs.get("error")) for t in trials]
    by_number = {t.number: t for t in trials}
    for number, values in before.items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].values == values
    for t in trials:
        if t.user_attrs.get("requeued"):
            reruns = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
            assert len(reruns) == 1 and reruns[0].params == t.params, t.number
            assert reruns[0].state == TrialState.COMPLETE
    ray_to_optuna = {t.user_attrs["ray_trial_id"]: t.number for t in trials if "ray_trial_id" in t.user_attrs}
    dirs = _ray_trial_dirs(runs)
    # Every Ray trial that ran has its Optuna trial, under the number its directory names.
    assert dirs and all(ray_to_optuna.get(ray_id) == number for ray_id, number in dirs.items()), (
        dirs,
        ray_to_optuna,
    )


@pytest.mark.parametrize("moment", ["running", "reporting", "completed"])
def test_driver_sigkill_then_resume(moment, tmp_path, tiny_checkpoint, demo_data):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=5)
    edit_yaml(path, budget={"steps": 20, "eval_every": 10})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    killed = subprocess.run(
        [sys.executable, str(DRIVER), moment, str(path), url],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=url)
    left_behind = study.user_attrs["local_ray"]["procs"]
    before = {t.number: t.values for t in study.get_trials() if t.state == TrialState.COMPLETE}
    if moment == "completed":
        assert len(before) == 1  # killed right after the first tell
    if moment == "reporting":
        # The trial's final evaluation reached the driver, which died before telling Optuna.
        assert not before and any(t.state == TrialState.RUNNING for t in study.get_trials())
    assert any(t.state == TrialState.RUNNING for t in study.get_trials()) or moment == "completed"

    out, resumed_procs = _run_watching_children(vlsweep("resume", "t", "--storage", url, cwd=tmp_path), 400)
    assert "re-queued" in out or moment == "completed", out
    _check_resumed(url, tmp_path / "runs", 5, before)
    # No Ray process of either driver is left: the killed driver's are reaped by the resume,
    # the resume's own stop with it.
    assert _alive(left_behind + resumed_procs) == [], out


def test_ctrl_c_stops_cleanly_and_resume_continues(tmp_path, tiny_checkpoint, demo_data):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=5)
    edit_yaml(path, budget={"steps": 30})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = vlsweep("launch", str(path), "--storage", url, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            states = [t.state for t in _trials(url)]
        except Exception:
            continue
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
    else:
        pytest.fail("the sweep never had a finished and a running trial at once")
    before = {t.number: t.values for t in _trials(url) if t.state == TrialState.COMPLETE}
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    out, procs = _run_watching_children(proc, 120)
    assert proc.returncode == 130, out
    assert "interrupted (Ctrl-C)" in out and "`vlsweep resume t` continues" in out, out
    assert "Traceback" not in out, out
    trials = _trials(url)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.user_attrs.get("requeued")]
    assert stopped and all(t.user_attrs["error"] == "interrupted (Ctrl-C); re-queued" for t in stopped)
    assert _alive(procs) == []

    res = vlsweep("resume", "t", "--storage", url, cwd=tmp_path)
    out, procs = _run_watching_children(res, 400)
    assert res.returncode == 0, out
    _check_resumed(url, tmp_path / "runs", 5, before)
    assert _alive(procs) == []


class _KillWorker(Callback):
    """SIGKILL the Ray worker of one trial at its first result, once."""

    def __init__(self, optuna_trial: int):
        self.optuna_trial, self.killed = optuna_trial, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # At its first training result (not the report it makes on starting): mid-trial.
        started = "worker_pid" in result and result.get("steps")
        if trial.config["optuna_trial"] == self.optuna_trial and not self.killed and started:
            self.killed = int(result["worker_pid"])
            os.kill(self.killed, signal.SIGKILL)


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_trial_is_retried_and_recorded_once(
    retries, ray_local, tmp_path, tiny_checkpoint, demo_data
):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=3)
    edit_yaml(path, budget={"steps": 12}, resources={"retries": retries})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    kill = _KillWorker(1)
    logged: list[str] = []
    run_sweep(cfg, base_dir, url, callbacks=[kill], log=logged.append)
    assert kill.killed
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 3, [(t.number, t.state) for t in trials]  # recorded once, not twice
    hit = trials[1]
    if retries:
        assert hit.state == TrialState.COMPLETE and hit.user_attrs["worker_restarts"] == 1
        assert hit.user_attrs["steps"] == 12
        assert any(
            "its Ray worker died (worker death); running it again from step 0" in line for line in logged
        )
    else:
        # Over resources.retries (0) as a worker death: FAIL now, the count recorded, its
        # run again (Tune's limit also counts node_loss_retries) stopped at its first report.
        assert hit.state == TrialState.FAIL and hit.user_attrs["worker_restarts"] == 1
        assert hit.user_attrs["error"].startswith(
            "the Ray worker failed: worker death 1 time, more than resources.retries: 0 allows"
        ), hit.user_attrs["error"]
        assert hit.user_attrs["last_failure"].startswith("worker death (worker died)")
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number != 1)


class _KillAfterCheckpoint(Callback):
    """SIGKILL the Ray worker of trial 0 once, as soon as Tune has registered its checkpoint
    at ``step`` (Tune's own hook for it: the moment, not a sleep)."""

    def __init__(self, step: int):
        self.step, self.killed = step, 0

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result
        if result.get(CHECKPOINT_KEY) == self.step and not self.killed:
            self.killed = int(result["worker_pid"])
            os.kill(self.killed, signal.SIGKILL)


def test_a_trial_killed_after_its_checkpoint_resumes_there_and_ends_as_the_uninterrupted_one(
    ray_local, tmp_path, tiny_checkpoint, demo_data, faults_record
):
    """budget.checkpoint_steps: the trial killed after its checkpoint at step 4 runs again
    from it (not from step 0) and reaches the same final metrics, bit for bit, as the same
    trial never interrupted; its checkpoints are gone from ray.storage_path once it ends."""
    finals = {}
    for name in ("whole", "killed"):
        root = tmp_path / name
        root.mkdir()
        path = sweep_cfg(root, tiny_checkpoint("qwen2_vl"), demo_data, trials=1, baseline=True)
        edit_yaml(path, budget={"steps": 8, "eval_every": 4, "checkpoint_steps": 4}, resources={"retries": 1})
        cfg, base_dir = load_sweep_config(path)
        url = f"sqlite:///{root / 'db.sqlite'}"
        kill = _KillAfterCheckpoint(4) if name == "killed" else None
        logged: list[str] = []
        run_sweep(cfg, base_dir, url, callbacks=[kill] if kill else [], log=logged.append)
        study = optuna.load_study(study_name="t", storage=url)
        check_invariants(study)
        (trial,) = study.get_trials()
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
        finals[name] = trial
        assert not list((root / "runs").rglob("checkpoint_*")), "a checkpoint was left in ray.storage_path"
    whole, killed = finals["whole"], finals["killed"]
    assert killed.user_attrs["worker_restarts"] == 1, logged
    assert killed.user_attrs.get("resumed_from_step") == 4, "\n".join(logged)
    assert "resumed_from_step" not in whole.user_attrs
    assert any("running it again from its checkpoint at step 4" in line for line in logged), logged[-10:]
    assert killed.values == whole.values
    measured = ("cer", "iou", "val_loss", "parse_fail_rate", "steps")
    assert {k: killed.user_attrs.get(k) for k in measured} == {k: whole.user_attrs.get(k) for k in measured}
    # The adapters each stored: the same bytes.
    adapters = []
    for name, trial in finals.items():
        study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / name / 'db.sqlite'}")
        files = artifacts.download(
            study,
            artifacts.store_of(study),
            trial,
            ["adapter_model.safetensors"],
            tmp_path / f"{name}-adapter",
        )
        adapters.append(files[0].read_bytes())
    assert adapters[0] == adapters[1]
    print(f"\nresumed from step 4: values {killed.values} == uninterrupted {whole.values}; adapters equal")
    faults_record(
        "worker killed after its checkpoint (local Ray)",
        optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'killed' / 'db.sqlite'}"),
        planned=1,
        resumed_from_step=4,
    )


def _faulty_worker(plan: dict[int, str]):
    """The real worker, with a fault injected into the trials ``plan`` names: ``raise`` (a
    RuntimeError at step 2) or ``oom`` (torch's real ``torch.cuda.OutOfMemoryError``,
    raised inside the training step of step 2, as CUDA's allocator raises it). A closure,
    so Ray ships it by value to its workers."""

    def run(config, **kwargs):
        import torch

        from vlsweep.search import worker
        from vlsweep.trials import engine

        fault = plan.get(config["optuna_trial"])
        real_run, real_step = engine.run_trial, engine.Trainer.step

        def step(self, batch, step=None):
            if step is not None and step >= 2:
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)"
                )
            return real_step(self, batch, step)

        def run_trial(*args, on_log_row=None, **kw):
            def log_row(row):
                if fault == "raise" and row["step"] >= 2:
                    raise RuntimeError(f"injected fault in trial {config['optuna_trial']}")
                if on_log_row is not None:
                    on_log_row(row)

            return real_run(*args, on_log_row=log_row, **kw)

        engine.run_trial = run_trial
        if fault == "oom":
            engine.Trainer.step = step
        try:
            worker.run(config, **kwargs)
        finally:
            # A reused actor runs the next trial unpatched.
            engine.run_trial, engine.Trainer.step = real_run, real_step

    return run


def test_failing_trials_are_recorded_and_the_sweep_goes_on(ray_local, tmp_path, tiny_checkpoint, demo_data):
    path = sweep_cfg(
        tmp_path,
        tiny_checkpoint("qwen2_vl"),
        demo_data,
        trials=5,
        # Every point given: trial 1's learning rate makes the loss overflow to nan.
        warm_start=[{"params": {"lr_llm": lr, "lora_r": 2}} for lr in (1e-3, 1e30, 1e-3, 1e-3, 2e-3)],
    )
    edit_yaml(path, budget={"steps": 6})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, worker_fn=_faulty_worker({2: "raise", 3: "oom"}), log=lambda _m: None)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 5
    errors = {t.number: t.user_attrs.get("error", "") for t in trials}
    assert errors[1].startswith("FloatingPointError: ") and "nan" in errors[1]
    assert errors[2] == "RuntimeError: injected fault in trial 2"
    assert errors[3].startswith("out of GPU memory at step 2 with batch 4; lower budget.batch_size")
    assert errors[3].endswith("(CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total))")
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_a_trial_out_of_gpu_memory_fails_and_the_next_runs_in_the_same_worker(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    """One trial at a time, actors reused: the trial whose training step runs out of GPU
    memory ends FAIL with its reason, and the next trial runs in the very same worker
    process and completes."""
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=3, max_concurrent=1)
    edit_yaml(path, budget={"steps": 4})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sweep(cfg, base_dir, url, worker_fn=_faulty_worker({1: "oom"}), log=lambda _m: None)
    trials = optuna.load_study(study_name="t", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"].startswith("out of GPU memory at step 2 with batch 4")
    assert trials[1].user_attrs["worker_pid"] == trials[2].user_attrs["worker_pid"]


def test_the_sweep_stops_when_the_first_trials_all_fail_alike(
    ray_local, tmp_path, tiny_checkpoint, demo_data
):
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=12)
    edit_yaml(path, budget={"steps": 6})
    cfg, base_dir = load_sweep_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    same = "the first 3 trials all failed with the same error: out of GPU memory"
    with pytest.raises(SweepFailed, match=same):
        run_sweep(cfg, base_dir, url, worker_fn=_faulty_worker(dict.fromkeys(range(12), "oom")), log=print)
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    # Three failed; at most one more was running (2 at a time) and was stopped.
    assert 3 <= len(trials) <= 4 and all(t.state == TrialState.FAIL for t in trials)


def test_cli_states_a_repeated_failure_once_and_exits_1(tmp_path, demo_data):
    """A Hub id that no worker can load (no network here): every trial fails the same way."""
    path = sweep_cfg(tmp_path, Path("no-such-org/no-such-model"), demo_data, trials=8)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = vlsweep("launch", str(path), "--storage", url, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    out, procs = _run_watching_children(proc, 300)
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the first 3 trials all failed with the same error" in errors[0], out
    assert "no-such-org/no-such-model" in errors[0] and "Traceback" not in out
    assert _alive(procs) == []


def test_postgresql_down_at_start_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg2://vlsweep@127.0.0.1:{port}/sweeps"
    for args in (["status", "t"], ["resume", "t"]):
        out = subprocess.run(
            [sys.executable, "-m", "vlsweep.cli", *args, "--storage", url],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert out.returncode == 2, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert f"the database server at 127.0.0.1:{port}" in lines[0] and "Connection refused" in lines[0]


class _RestartPostgres(Callback):
    """Stop PostgreSQL when the first trial completes; start it again 6 s later, while the
    driver keeps going (its next writes meet a dead server)."""

    done = threading.Event()  # on the class: Tune pickles its callbacks with the experiment

    def __init__(self):
        self.started = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.started:
            return
        self.started = True
        subprocess.run(os.environ["VLSWEEP_TEST_PG_STOP"], shell=True, check=True, capture_output=True)

        def start_later():
            time.sleep(6)
            subprocess.run(os.environ["VLSWEEP_TEST_PG_START"], shell=True, check=True, capture_output=True)
            _RestartPostgres.done.set()

        threading.Thread(target=start_later, daemon=True).start()


def test_postgresql_restarted_during_a_sweep(ray_local, tmp_path, tiny_checkpoint, demo_data, caplog):
    url = fresh_pg_database()
    if "VLSWEEP_TEST_PG_START" not in os.environ:
        # A server this test cannot stop and start (not .ci/postgres.sh's); CI requires one.
        if os.environ.get("VLSWEEP_REQUIRE_PG"):
            pytest.fail(
                'VLSWEEP_REQUIRE_PG is set but VLSWEEP_TEST_PG_START is not: eval "$(bash .ci/postgres.sh)"'
            )
        pytest.skip('needs a server it can restart: eval "$(bash .ci/postgres.sh)"')
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=5)
    edit_yaml(path, budget={"steps": 6})
    cfg, base_dir = load_sweep_config(path)
    restart = _RestartPostgres()
    _RestartPostgres.done.clear()
    try:
        run_sweep(cfg, base_dir, url, callbacks=[restart], log=lambda _m: None)
    finally:
        assert restart.done.wait(30), "PostgreSQL did not come back"
    assert "lost the study database" in caplog.text and "reachable again" in caplog.text
    study = optuna.load_study(study_name="t", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
