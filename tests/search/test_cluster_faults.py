"""The cluster's faults on a real two-node Ray cluster on this machine (`ray start` on
loopback, token auth on), the study in PostgreSQL, the trials' files and Ray's results and
checkpoints in S3 (moto's server on loopback):

- a node lost mid-trial (all its Ray processes killed): the trial runs again on the
  surviving node from its last checkpoint, without spending resources.retries;
- a node preempted (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, then gone as
  a reclaimed spot instance goes): node loss, alike;
- the head lost with the driver on it: a new head and `vlsweep resume` finish the sweep.

Each moment is read from the study (a trial's recorded node and checkpoint), never slept
for. Each test writes its row of docs/benchmarks/faults.json (``faults_record``).
Run with ``pytest -m cluster`` (CI does, with .ci/postgres.sh and .ci/s3.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.support.helpers import train_config
from tests.support.postgres import fresh_pg_database
from tests.support.ray_nodes import ENV, RAY, free_ports, ours, stop
from tests.support.sweeps import check_invariants
from vlsweep import artifacts

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster_token")]

# The head's GCS rules a dead node dead within ~3 s instead of Ray's default ~15 s (a
# cloud's cluster may tune this too, or learn of a preemption first).
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class Cluster:
    """A head and a second node, each with 1 CPU and a temp dir of its own."""

    def __init__(self, tag: str, env: dict[str, str]):
        self.env = {**ENV, **env, **FAST_HEALTH}
        self.head = Path(f"/tmp/vlsweep-ray-{os.getpid()}-{tag}-head")
        self.node2 = Path(f"/tmp/vlsweep-ray-{os.getpid()}-{tag}-node2")
        self.port = free_ports(1)[0]

    def _start(self, temp: Path, head: bool) -> None:
        agents = free_ports(4)
        cmd = [RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}"]
        cmd += ["--disable-usage-stats", f"--dashboard-agent-listen-port={agents[0]}"]
        cmd += [f"--dashboard-agent-grpc-port={agents[1]}", f"--metrics-export-port={agents[2]}"]
        cmd += [f"--runtime-env-agent-port={agents[3]}"]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            cmd += [f"--address=127.0.0.1:{self.port}"]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def start(self) -> Cluster:
        self._start(self.head, head=True)
        self._start(self.node2, head=False)
        return self

    def node_id(self, temp: Path) -> str:
        """The Ray node id of the node whose temp dir is ``temp``."""
        script = (
            "import json, ray; ray.init(address='auto', logging_level='ERROR'); "
            "nodes = [[n['NodeID'], n['ObjectStoreSocketName']] for n in ray.nodes() if n['Alive']]; "
            "print(json.dumps(nodes))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**self.env, "RAY_ADDRESS": f"127.0.0.1:{self.port}"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        nodes = json.loads(out.stdout.strip().splitlines()[-1])
        (found,) = [node for node, socket_path in nodes if str(temp) in socket_path]
        return found

    def kill(self, *temps: Path) -> None:
        stop(list(temps))

    def close(self) -> None:
        stop([self.head, self.node2])
        assert ours([self.head, self.node2]) == [], "a Ray process of the test cluster is left"


def _sweep_dir(root: Path, name: str, ckpt: Path, data: Path, bucket: str, trials: int = 2) -> Path:
    """A sweep whose trials are long enough to be caught mid-way (the node taken away
    seconds after a checkpoint, well before the trial's end), checkpointing every 10
    steps, its files and Ray's results in the bucket."""
    cfg = train_config(
        ckpt,
        data,
        budget={"steps": 150, "batch_size": 4, "max_new_tokens": 8, "eval_every": 50, "checkpoint_steps": 10},
    )
    cfg.pop("seed")
    cfg.update(
        name=name,
        space={"lr_llm": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        search={"trials": trials, "max_concurrent": 2, "baseline": False},
        resources={"cpus_per_trial": 1, "retries": 0, "node_loss_retries": 2},
        artifacts={"store": f"s3://{bucket}"},
        ray={"storage_path": f"s3://{bucket}/ray"},
        output_dir=str(root / name / "runs"),
    )
    wd = root / name
    wd.mkdir(parents=True)
    (wd / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _vlsweep(cluster: Cluster, wd: Path, *args: str) -> subprocess.Popen:
    """`vlsweep ARGS --address HEAD` in the sweep's directory, the driver on this machine."""
    return subprocess.Popen(
        [sys.executable, "-m", "vlsweep.cli", *args, "--address", f"127.0.0.1:{cluster.port}"],
        env=cluster.env,
        cwd=wd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(url: str, name: str, proc: subprocess.Popen, ready, what: str, seconds: float = 300):
    """Poll the study until ``ready(trials)`` gives a trial; fails if the driver ends first."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}:\n{proc.stdout.read()[-3000:]}")
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials()
        except Exception:  # the study is not made yet
            trials = []
        found = ready(trials)
        if found is not None:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _checkpointed_on(node: str | None):
    """A RUNNING trial on ``node`` (any node: None) whose checkpoint Tune has registered."""

    def ready(trials):
        for t in trials:
            running = t.state == TrialState.RUNNING and t.user_attrs.get("checkpoint_step")
            if running and (node is None or t.user_attrs.get("node_id") == node):
                return t
        return None

    return ready


def _bucket_is_clean(bucket: str, study: optuna.Study) -> None:
    """Only the finished trials' files at the bucket's top level, and no checkpoint left."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    removed = artifacts.removed_ids(study)
    linked = {m.artifact_id for t in study.get_trials() for m in artifacts.trial_files(t, removed).values()}
    assert {k for k in keys if not k.startswith("ray/")} == linked, "a file no trial links is in the store"
    assert not [k for k in keys if "/checkpoint_" in k], sorted(k for k in keys if "checkpoint_" in k)


@pytest.fixture
def lost_node_sweep(s3, tmp_path, tiny_checkpoint, demo_data):
    """A cluster and a sweep on it, run until a trial on the second node has a checkpoint;
    yields what the test needs to take that node away, then to read the outcome."""
    cluster = Cluster("loss", s3["env"]).start()
    try:
        url = fresh_pg_database()
        wd = _sweep_dir(tmp_path, "nodeloss", tiny_checkpoint("qwen2_vl"), demo_data, s3["bucket"])
        node2 = cluster.node_id(cluster.node2)
        proc = _vlsweep(cluster, wd, "launch", "sweep.yaml", "--storage", url)
        hit = _wait_for(url, "nodeloss", proc, _checkpointed_on(node2), "a checkpoint of a trial on node 2")
        yield {
            "cluster": cluster,
            "url": url,
            "proc": proc,
            "node2": node2,
            "hit": hit,
            "bucket": s3["bucket"],
        }
    finally:
        cluster.close()


def _finish(setup) -> tuple[optuna.Study, optuna.trial.FrozenTrial, str]:
    proc = setup["proc"]
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name="nodeloss", storage=setup["url"])
    check_invariants(study)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("error"), t.user_attrs.get("last_failure")) for t in trials
    ]
    hit = study.trials[setup["hit"].number]
    # Run again elsewhere, from its checkpoint, as a node loss: resources.retries (0) unspent.
    assert hit.user_attrs["node_losses"] == 1 and "worker_restarts" not in hit.user_attrs, hit.user_attrs
    assert hit.user_attrs["node_id"] != setup["node2"]
    assert hit.user_attrs["resumed_from_step"] >= setup["hit"].user_attrs["checkpoint_step"]
    _bucket_is_clean(setup["bucket"], study)
    return study, hit, out


def test_a_node_killed_mid_trial_reruns_it_on_the_other_node_from_its_checkpoint(
    lost_node_sweep, faults_record
):
    setup = lost_node_sweep
    setup["cluster"].kill(setup["cluster"].node2)  # every Ray process of node 2, at once
    study, hit, out = _finish(setup)
    assert "node loss (node died)" in hit.user_attrs["last_failure"], hit.user_attrs["last_failure"]
    assert f"trial {hit.number}: its node was lost (node loss); running it again from its checkpoint" in out
    faults_record(
        "node lost mid-trial", study, planned=2, resumed_from_step=hit.user_attrs["resumed_from_step"]
    )


def test_a_preempted_node_counts_as_node_loss(lost_node_sweep, faults_record):
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` (what a cloud's autoscaler
    sends for a reclaimed spot instance), then the node gone at its deadline."""
    setup = lost_node_sweep
    cluster = setup["cluster"]
    drain = subprocess.run(
        [RAY, "drain-node", f"--address=127.0.0.1:{cluster.port}", f"--node-id={setup['node2']}"]
        + ["--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=spot instance reclaimed"]
        + ["--deadline-remaining-seconds=1"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drain.returncode == 0, drain.stdout[-2000:] + drain.stderr[-2000:]
    cluster.kill(cluster.node2)  # the instance goes, as the cloud takes it back
    study, hit, _ = _finish(setup)
    assert "node loss (preempted)" in hit.user_attrs["last_failure"], hit.user_attrs["last_failure"]
    faults_record(
        "node preempted (drain-node)", study, planned=2, resumed_from_step=hit.user_attrs["resumed_from_step"]
    )


def test_the_head_lost_mid_sweep_and_a_new_head_lets_resume_finish(
    s3, tmp_path, tiny_checkpoint, demo_data, faults_record
):
    """The head goes with the driver on it (the study in PostgreSQL, the files in S3); a new
    cluster comes up and `vlsweep resume` finishes the sweep: each planned trial once, the
    lost ones run again, nothing they had begun to store or checkpoint left behind."""
    url = fresh_pg_database()
    wd = _sweep_dir(tmp_path, "headloss", tiny_checkpoint("qwen2_vl"), demo_data, s3["bucket"], trials=3)
    first = Cluster("head1", s3["env"]).start()
    try:
        proc = _vlsweep(first, wd, "launch", "sweep.yaml", "--storage", url)
        _wait_for(url, "headloss", proc, _checkpointed_on(None), "a trial's checkpoint")
        # The head machine goes: its Ray processes and the driver on it. The other node,
        # without its head's GCS, goes too (Ray without GCS fault tolerance).
        os.killpg(proc.pid, 9)
        proc.wait(timeout=60)
        first.kill(first.head, first.node2)
    finally:
        first.close()
    study = optuna.load_study(study_name="headloss", storage=url)
    lost = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert lost, "no trial was running when the head went"
    second = Cluster("head2", s3["env"]).start()
    try:
        again = _vlsweep(second, wd, "resume", "headloss", "--storage", url)
        out, _ = again.communicate(timeout=600)
    finally:
        second.close()
    assert again.returncode == 0, out[-4000:]
    assert f"re-queued {len(lost)} trial(s) lost with the previous driver" in out, out[-3000:]
    study = optuna.load_study(study_name="headloss", storage=url)
    check_invariants(study)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3, [(t.number, t.state, t.user_attrs.get("error")) for t in trials]
    requeued = [t for t in trials if t.user_attrs.get("requeued")]
    assert sorted(t.number for t in requeued) == lost
    assert sorted(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs) == lost
    _bucket_is_clean(s3["bucket"], study)
    faults_record("head lost (PostgreSQL study, S3 store)", study, planned=3)
