"""A real multi-node Ray cluster on one machine: a head and a second node started with
`ray start` on loopback (each with its own temp dir) with Ray's token authentication on, as
Ray recommends, the study in PostgreSQL, sweeps sent with `ray job submit` and with
`vlsweep launch --address ray://...`: with the token they run, without it they are refused.

Run alone with ``pytest -m cluster`` (CI does): it starts Ray nodes of its own, with
PostgreSQL from .ci/postgres.sh (its PGPASSWORD reaches the nodes' environment, as a
cluster's secret would; never a command line).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.support.postgres import fresh_pg_database
from tests.support.ray_nodes import AUTH_VARS, ENV, RAY
from tests.support.ray_nodes import free_ports as _free_ports
from tests.support.ray_nodes import ours as _ours
from tests.support.ray_nodes import stop as _stop

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster_token")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU, job server) and a second node (1 CPU): trials can run on either."""
    root = tmp_path_factory.mktemp("cluster")
    # Ray's socket paths must stay short: temp dirs right under /tmp.
    dirs = [Path(f"/tmp/vlsweep-ray-{os.getpid()}-{name}") for name in ("head", "node2")]
    ports = iter(_free_ports(3 + 2 * 4))
    port, dash, client = next(ports), next(ports), next(ports)

    def agent_ports() -> list[str]:
        # Each node's agents on ports of their own: the defaults collide with any other Ray
        # on the machine (a developer's, or the other node), and its job agent never starts.
        return [
            f"--dashboard-agent-listen-port={next(ports)}",
            f"--dashboard-agent-grpc-port={next(ports)}",
            f"--metrics-export-port={next(ports)}",
            f"--runtime-env-agent-port={next(ports)}",
        ]

    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    head += agent_ports()
    head += [f"--temp-dir={dirs[0]}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    head += [f"--dashboard-port={dash}", f"--ray-client-server-port={client}", "--disable-usage-stats"]
    node2 = [RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
    node2 += [f"--temp-dir={dirs[1]}", "--disable-usage-stats", *agent_ports()]
    try:
        for cmd in (head, node2):
            out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        # The job server answers before its agent is up ("No available agent to submit job"):
        # wait until a trivial job goes through, as a user retrying would.
        deadline = time.time() + 120
        while True:
            warm = subprocess.run(
                [RAY, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--", "python", "-c", "pass"],
                env=ENV,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if warm.returncode == 0:
                break
            assert time.time() < deadline, warm.stdout[-2000:] + warm.stderr[-2000:]
            time.sleep(2)
        yield {"root": root, "jobs": f"http://127.0.0.1:{dash}", "client": f"ray://127.0.0.1:{client}"}
    finally:
        _stop(dirs)
    assert _ours(dirs) == [], "a Ray process of the test cluster is left"


def _working_dir(root: Path, name: str, tiny_checkpoint, demo_data, **ray_cfg) -> Path:
    """A sweep directory as a user would submit it: config, checkpoint and data, relative."""
    wd = root / name
    wd.mkdir()
    shutil.copytree(tiny_checkpoint("qwen2_vl"), wd / "ckpt")
    shutil.copytree(demo_data, wd / "data")
    cfg = {
        "name": name,
        "model": {"name_or_path": "ckpt"},
        "data": {"train": "data/train.jsonl", "val": "data/val.jsonl"},
        "budget": {"steps": 4, "batch_size": 4, "max_new_tokens": 8},
        "space": {"lr_llm": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "search": {"trials": 4, "max_concurrent": 2, "baseline": False},
        "resources": {"cpus_per_trial": 1},
        # One machine: the nodes share this disk, as nodes share a mount on a real cluster.
        "ray": {"shared_storage": True, **ray_cfg},
        "output_dir": str(root / "shared" / name),
    }
    (wd / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _check_ran_on_both_nodes(url: str, name: str) -> None:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
    assert len({t.user_attrs["node_id"] for t in trials}) == 2, "the trials ran on one node only"


def _vlsweep(cluster, wd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`vlsweep ARGS --address ray://...` from the sweep directory, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", *args, "--address", cluster["client"]],
        env=ENV,
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _submit(cluster, wd: Path, url: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir WD -- vlsweep launch sweep.yaml`."""
    return subprocess.run(
        [RAY, "job", "submit", f"--address={cluster['jobs']}", f"--working-dir={wd}", "--"]
        + ["vlsweep", "launch", "sweep.yaml", "--storage", url],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _launch_joining(wd: Path, url: str, port: int, timeout: float) -> subprocess.CompletedProcess:
    """`vlsweep launch` in ``wd`` joining the cluster whose GCS is on ``port``."""
    return subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "launch", "sweep.yaml", "--storage", url]
        + ["--address", f"127.0.0.1:{port}"],
        env=ENV,
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_for_autoscaler_report(port: int, node_type: str) -> None:
    """Until `ray status` shows the autoscaler's report naming ``node_type``."""
    deadline = time.time() + 120
    while True:
        cmd = [RAY, "status", f"--address=127.0.0.1:{port}"]
        status = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
        if status.returncode == 0 and node_type in status.stdout:
            return
        assert time.time() < deadline, status.stdout[-2000:] + status.stderr[-2000:]
        time.sleep(0.5)


def test_a_fixed_cluster_with_the_v2_autoscaler_refuses_a_trial_no_node_can_hold(
    tmp_path, tiny_checkpoint, demo_data
):
    """A head started by hand with Ray's v2 autoscaler on runs it read-only: no node can
    be added, so a trial asking for a GPU none has is refused with exit 2, as on any fixed
    cluster, instead of waiting for an autoscaler that never adds one."""
    temp = Path(f"/tmp/vlsweep-ray-{os.getpid()}-v2")
    (port,) = _free_ports(1)
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    head += [f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"]
    wd = _working_dir(tmp_path, "fixedv2", tiny_checkpoint, demo_data)
    raw = yaml.safe_load((wd / "sweep.yaml").read_text())
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 1}
    (wd / "sweep.yaml").write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    try:
        started = subprocess.run(
            head, env={**ENV, "RAY_enable_autoscaler_v2": "1"}, capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        monitors = [" ".join(p.cmdline()) for p in _ours([temp]) if "monitor" in " ".join(p.cmdline())]
        assert any("autoscaler/v2/monitor.py" in m for m in monitors), monitors
        out = _launch_joining(wd, url, port, timeout=300)
    finally:
        _stop([temp])
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    refused = "error: resources.gpus_per_trial: each trial asks for 1 CPU, 1 GPU"
    assert refused in out.stderr, out.stderr[-2000:]
    assert "autoscaler may add" not in out.stdout + out.stderr


def test_trials_wait_for_an_autoscaler_and_run_on_the_node_it_adds(tmp_path, tiny_checkpoint, demo_data):
    """A head whose real Ray autoscaler (Ray's fake multi-node provider: it starts nodes as
    local processes) can add a node with a GPU, and none has one yet: the sweep says it
    waits for the autoscaler instead of refusing, and its trials run on the added node."""
    temp = Path(f"/tmp/vlsweep-ray-{os.getpid()}-scale")
    port, client = _free_ports(2)
    config = {
        "cluster_name": "vlsweep-test",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu-worker": {
                "resources": {"CPU": 1, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        "head_node_type": "ray.head.default",
        "idle_timeout_minutes": 5,
        "upscaling_speed": 1.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    }
    (tmp_path / "autoscaler.yaml").write_text(yaml.safe_dump(config))
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    head += [f"--autoscaling-config={tmp_path / 'autoscaler.yaml'}", f"--temp-dir={temp}"]
    head += ["--include-dashboard=false", f"--ray-client-server-port={client}", "--disable-usage-stats"]
    env = {**ENV, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
    wd = _working_dir(tmp_path, "scaled", tiny_checkpoint, demo_data)
    raw = yaml.safe_load((wd / "sweep.yaml").read_text())
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 1}
    raw["search"].update(trials=2, max_concurrent=1)
    (wd / "sweep.yaml").write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    try:
        started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        # The moment: the autoscaler has published its first report (its node types), which
        # is what the sweep reads to know that nodes may be added. Launched before it, the
        # sweep would see a fixed cluster and refuse, as it should.
        _wait_for_autoscaler_report(port, "ray.head.default")
        out = _launch_joining(wd, url, port, timeout=600)
    finally:
        _stop([temp])
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "each trial asks for 1 CPU, 1 GPU, but no node of the Ray cluster has that" in logs, logs[-3000:]
    assert "the cluster's autoscaler may add such a node: trials wait for it" in logs
    trials = optuna.load_study(study_name="scaled", storage=url).get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error")) for t in trials
    ]
    head_node = {t.user_attrs["node_id"] for t in trials}
    assert len(head_node) == 1 and not head_node.pop().endswith("00000"), (
        "ran on the head, not the added node"
    )
    assert _ours([temp]) == [], "a Ray process of the autoscaling cluster is left"


def test_ray_job_submit_runs_trials_on_both_nodes(cluster, tiny_checkpoint, demo_data):
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "jobsweep", tiny_checkpoint, demo_data)
    out = _submit(cluster, wd, url)
    assert out.returncode == 0 and "succeeded" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-2000:]
    )
    _check_ran_on_both_nodes(url, "jobsweep")


def test_launch_through_ray_client_runs_trials_on_both_nodes(cluster, tiny_checkpoint, demo_data):
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "clientsweep", tiny_checkpoint, demo_data)
    out = _vlsweep(cluster, wd, "launch", "sweep.yaml", "--storage", url)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Pareto front of 'clientsweep'" in out.stdout
    _check_ran_on_both_nodes(url, "clientsweep")
    # Resume goes the same way (its driver on the head); here nothing is left to run.
    again = _vlsweep(cluster, wd, "resume", "clientsweep", "--storage", url, timeout=300)
    # (The head's own log lines stream back asynchronously, so only the outcome is checked.)
    assert again.returncode == 0 and "Pareto front of 'clientsweep'" in again.stdout, again.stderr[-3000:]
    _check_ran_on_both_nodes(url, "clientsweep")  # still exactly the 4 trials


def test_without_the_token_a_sweep_through_ray_client_exits_2_naming_it(
    cluster, tiny_checkpoint, demo_data, tmp_path
):
    """A user whose machine lacks the cluster's token: exit 2 and an `error:` that says
    where Ray looks for it and how to pass it, not a stack trace or a hang. Nothing is
    created in the study storage."""
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "notoken", tiny_checkpoint, demo_data)
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in ENV.items() if k not in AUTH_VARS}, "HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "launch", "sweep.yaml", "--storage", url]
        + ["--address", cluster["client"]],
        env=env,
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "error: --address ray://" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "no Ray auth token was found here" in out.stderr and "~/.ray/auth_token" in out.stderr
    assert "notoken" not in optuna.get_all_study_names(url)
    # With a wrong token the error says the token was sent and to check it.
    wrong = home / "wrong_token"
    wrong.write_text("0" * 64)
    out = subprocess.run(
        [sys.executable, "-m", "vlsweep.cli", "launch", "sweep.yaml", "--storage", url]
        + ["--address", cluster["client"]],
        env={**env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        cwd=wd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and f"the token from {wrong} was sent" in out.stderr, out.stderr[-2000:]


def test_ctrl_c_through_ray_client_stops_the_driver_on_the_head(cluster, tiny_checkpoint, demo_data):
    """Ctrl-C where `vlsweep launch --address ray://` runs interrupts the driver on the head,
    which re-queues the running trials; `vlsweep resume` through Ray Client finishes."""
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "ctrlc", tiny_checkpoint, demo_data)
    raw = yaml.safe_load((wd / "sweep.yaml").read_text())
    raw["budget"]["steps"] = 600
    (wd / "sweep.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "vlsweep.cli"]
    proc = subprocess.Popen(
        [*cmd, "launch", "sweep.yaml", "--storage", url, "--address", cluster["client"]],
        env=ENV,
        cwd=wd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            states = [t.state for t in optuna.load_study(study_name="ctrlc", storage=url).get_trials()]
        except Exception:
            continue
        if TrialState.RUNNING in states:
            break
    else:
        pytest.fail(f"no trial ever ran: {proc.communicate()[0][-3000:] if proc.poll() is not None else ''}")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "interrupted (Ctrl-C)" in out, out[-3000:]
    trials = optuna.load_study(study_name="ctrlc", storage=url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t for t in trials if t.user_attrs.get("requeued")], [(t.state, t.user_attrs) for t in trials]
    again = _vlsweep(cluster, wd, "resume", "ctrlc", "--storage", url)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    trials = optuna.load_study(study_name="ctrlc", storage=url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_local_results_path_on_a_multi_node_cluster_is_refused_before_any_trial(
    cluster, tiny_checkpoint, demo_data
):
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "localpath", tiny_checkpoint, demo_data, shared_storage=False)
    out = _submit(cluster, wd, url, timeout=300)
    logs = out.stdout + out.stderr
    assert out.returncode != 0 and "exit code 2" in logs, logs[-3000:]
    assert "error: ray.storage_path:" in logs and "the Ray cluster has 2 nodes" in logs
    # Refused before any trial ran: the study it had just made is not kept.
    assert "localpath" not in optuna.get_all_study_names(url)


def test_two_worker_trials_span_both_nodes_and_mo_asha_stops_some(cluster, tiny_checkpoint, demo_data):
    """Trials of 2 train workers on the two 1-CPU nodes: each trial's ranks are one on each
    node (no node holds both), MO-ASHA stops some at a rung, every trial ends COMPLETE or
    PRUNED with world_size 2, and nothing is left RUNNING."""
    url = fresh_pg_database()
    wd = _working_dir(cluster["root"], "ddpsweep", tiny_checkpoint, demo_data)
    raw = yaml.safe_load((wd / "sweep.yaml").read_text())
    raw["budget"].update(steps=9, eval_every=None)
    raw["resources"]["train_workers"] = 2
    raw["search"].update(trials=6, early_stopping="mo-asha", grace_steps=1, reduction_factor=3)
    (wd / "sweep.yaml").write_text(yaml.safe_dump(raw))
    out = _submit(cluster, wd, url, timeout=900)
    assert out.returncode == 0 and "succeeded" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-2000:]
    )
    trials = optuna.load_study(study_name="ddpsweep", storage=url).get_trials()
    states = [(t.number, t.state, t.user_attrs.get("steps"), t.user_attrs.get("error")) for t in trials]
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), (
        states
    )
    assert any(t.state == TrialState.PRUNED for t in trials), states
    for t in trials:
        assert t.user_attrs["world_size"] == 2
        ranks = t.user_attrs["rank_placement"]
        assert sorted(r["rank"] for r in ranks) == [0, 1]
        assert len({r["node_id"] for r in ranks}) == 2, (t.number, ranks)
