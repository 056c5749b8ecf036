"""The Ray backend of a sweep: starting Ray (locked, by ``ray_security``) or joining it,
stopping the local Ray processes a killed driver left behind, what a trial asks Ray for
and whether any node can hold it, and why a pending trial waits.

Everything here talks to Ray; nothing here knows Optuna beyond recording on the study.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator

import optuna

from vlsweep import artifacts
from vlsweep.errors import UserInputError
from vlsweep.search import ray_security
from vlsweep.search.config import SweepConfig

Log = Callable[[str], None]
# The study attr where a driver records the local Ray it started.
LOCAL_RAY_ATTR = "local_ray"


# Ray's resource names for what a trial asks for, and the config keys that set them.
RESOURCE_KEYS = {
    "CPU": "resources.cpus_per_trial",
    "GPU": "resources.gpus_per_trial",
    "memory": "resources.memory_gb_per_trial",
}


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What each trial asks Ray for, in Ray's resource names (memory in bytes); for a
    trial on several train workers, what each of its ``resources.train_workers`` asks."""
    request = {"CPU": cfg.resources.cpus_per_trial, "GPU": cfg.resources.gpus_per_trial}
    if cfg.resources.memory_gb_per_trial is not None:
        request["memory"] = cfg.resources.memory_gb_per_trial * 2**30
    return {k: v for k, v in request.items() if v > 0}


def describe_resources(resources: dict[str, float], keys: tuple[str, ...] = ("CPU", "GPU", "memory")) -> str:
    parts = []
    for key in keys:
        value = resources.get(key, 0.0)
        if key == "memory":
            parts.append(f"{value / 2**30:.1f} GiB memory")
        else:
            parts.append(f"{value:g} {key}{'' if value == 1 else 's'}")
    return ", ".join(parts)


def autoscaling(cfg: SweepConfig) -> bool:
    """Whether an autoscaler may add nodes to the cluster Ray is connected to."""
    if cfg.ray.autoscaling is not None:
        return cfg.ray.autoscaling
    # Ray has no public call for this; these are the marks its own tools read: the cluster
    # launcher's bootstrap file on the head (what Ray Tune checks), the node types the v2
    # autoscaler sees, and the status the v1 autoscaler writes. Every Ray head runs an
    # autoscaler, a read-only one on a fixed cluster, whose node types are the nodes
    # themselves (v1: "node_<id>"; v2: nodes with no type name); a real one (KubeRay's,
    # the cluster launcher's) names the node types of its config, and the nodes it starts
    # carry them. The v2 flag alone says which autoscaler runs, not that it adds nodes.
    try:
        from ray.tune.execution.cluster_info import _is_ray_cluster

        if _is_ray_cluster():
            return True
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get, internal_kv_get_gcs_client

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_resource_state

            state = get_cluster_resource_state(internal_kv_get_gcs_client())
            return any(node.ray_node_type_name for node in state.node_states)

        raw = _internal_kv_get("__autoscaling_status")
        mapping = json.loads(raw).get("autoscaler_report", {}).get("node_type_mapping") or {} if raw else {}
        return any(kind != f"node_{node}" for node, kind in mapping.items())
    except Exception:  # an older or newer Ray without these marks: assume a fixed cluster
        return False


def check_trial_fits(cfg: SweepConfig, log: Log) -> bool:
    """A trial that no node of the cluster can ever hold is an error before any trial
    starts (Ray would keep it pending forever, silently), unless an autoscaler may add
    such a node: then say so and wait. Returns whether trials may wait for an autoscaler."""
    import ray

    request = trial_resources(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    workers = cfg.resources.train_workers

    scaling = autoscaling(cfg)
    if workers > 1:
        return _check_workers_fit(request, workers, nodes, scaling, log)
    if not request or any(_fits_times(n.get("Resources", {}), request) > 0 for n in nodes):
        return scaling
    keys = tuple(k for k in RESOURCE_KEYS if k in request or k != "memory")
    have = "; ".join(f"{describe_resources(n.get('Resources', {}), keys)}" for n in nodes)
    short = [
        RESOURCE_KEYS[k]
        for k, v in request.items()
        if not any(n.get("Resources", {}).get(k, 0.0) >= v for n in nodes)
    ]
    asked = [RESOURCE_KEYS[k] for k in request]
    what = (
        f"each trial asks for {describe_resources(request, tuple(request))}, but no node of the Ray "
        f"cluster has that{'' if short else ' all at once'} "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {have})"
    )
    if scaling:
        log(f"{what}; the cluster's autoscaler may add such a node: trials wait for it")
        return True
    fix = (
        "lower "
        + " / ".join(short or asked)
        + (" (gpus_per_trial: 0 trains on the CPU)" if "resources.gpus_per_trial" in short else "")
        + ", or run on a cluster with such a node (ray.autoscaling: true if an autoscaler will add one)"
    )
    raise UserInputError(f"{', '.join(short or asked)}: {what}; {fix}")


def _check_workers_fit(
    request: dict[str, float], workers: int, nodes: list[dict], scaling: bool, log: Log
) -> bool:
    """A trial on ``workers`` train workers needs that many bundles of ``request`` at once,
    on one node or spread over several (Ray Train packs them where it can)."""
    room = sum(_fits_times(n.get("Resources", {}), request) for n in nodes)
    if room >= workers:
        return scaling
    have = "; ".join(describe_resources(n.get("Resources", {})) for n in nodes)
    what = (
        f"each trial asks for {workers} train workers of {describe_resources(request, tuple(request))} "
        f"each, but the Ray cluster holds {room} such worker{'s' if room != 1 else ''} at once "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {have})"
    )
    if scaling:
        log(f"{what}; the cluster's autoscaler may add nodes: trials wait for them")
        return True
    keys = " / ".join(RESOURCE_KEYS[k] for k in request)
    raise UserInputError(
        f"resources.train_workers: {what}; lower resources.train_workers or {keys}, or run on a "
        "cluster with room for them (ray.autoscaling: true if an autoscaler will add nodes)"
    )


def trials_at_once(request: dict[str, float], workers: int) -> int | None:
    """How many trials of ``workers`` train workers the live nodes hold at once (None: no
    Ray to ask)."""
    import ray

    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    except Exception:
        return None
    return sum(_fits_times(node, request) for node in nodes) // workers if request else None


def _fits_times(node: dict[str, float], request: dict[str, float]) -> int:
    """How many trials a node's resources hold at once. In Ray's own fixed-point units
    (1e-4 of a resource), since float floor division gets 1.0 // 0.2 = 4."""
    return min(round(node.get(k, 0.0) * 10_000) // round(v * 10_000) for k, v in request.items())


def waiting_reason(request: dict[str, float], scaling: bool, active: int, workers: int = 1) -> str:
    """Why a pending trial is not running yet, for the progress line. ``active`` counts the
    running and pending trials: while the cluster's nodes can hold that many, the pending
    ones are being started (Ray has already reserved what they asked for, so the free
    resources alone would say "waiting"). ``request`` is each of a trial's ``workers``
    train workers' share."""
    import ray

    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        free = ray.available_resources()
    except Exception:
        return ""
    room = sum(_fits_times(node, request) for node in nodes) // workers if request else active
    if active <= room:
        return "starting"
    each = f"{workers} train workers of " if workers > 1 else ""
    return (
        f"waiting for resources: each asks for {each}{describe_resources(request, tuple(request))}, "
        f"free now {describe_resources(free, tuple(request))}"
        + ("; the autoscaler may add nodes" if scaling else "")
    )


def ray_init(cfg: SweepConfig, address: str | None, log: Log, study: optuna.Study) -> bool:
    """Start (or join) Ray; True when this call started a local Ray that we must stop.

    No address, or Ray's "local" (``--address local``, ``ray.address: local``,
    ``RAY_ADDRESS=local``), starts a new Ray on this machine, locked by
    ``ray_security.start_local_ray``: token auth on and loopback only, checked. Any other
    address joins that cluster, sending a token only when one is given for it.
    """
    import ray

    if ray.is_initialized():
        return False
    # Inside `ray job submit`, the job's cluster is RAY_ADDRESS.
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    tune_output_off()
    if address is not None and not is_local(address):
        log(f"joining Ray at {address} ...")
        try:
            with ray_security.joining():
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
                )
        except ray_security.join_errors() as err:
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
            msg = f"cannot join the Ray cluster at {address} ({last}); {ray_security.token_hint()}"
            raise UserInputError(msg) from None
        return False
    ray_security.start_local_ray(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, log=log)
    # The local Ray's processes (GCS, raylet, agents) are this driver's children. Some of
    # them outlive a SIGKILLed driver and ignore SIGTERM (measured with Ray 2.60), so we
    # record them on the study; the next driver of this sweep stops what is left.
    import psutil

    procs = [[p.pid, p.create_time()] for p in psutil.Process().children(recursive=True)]
    record = {"host": socket.gethostname(), "driver_pid": os.getpid(), "procs": procs}
    study.set_user_attr(LOCAL_RAY_ATTR, record)
    return True


def tune_output_off() -> None:
    """Ray Tune's own result loggers and console table off (unless the user set them):
    the sweep reports its progress itself."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@contextlib.contextmanager
def local_ray(
    *, num_cpus: int | None, num_gpus: int | None = None, log: Log = lambda _m: None
) -> Iterator[None]:
    """A local Ray for the length of a ``with``, started as ``vlsweep launch`` starts its
    own (token auth on, loopback only, checked) and with Tune's output as a sweep has it.
    What benchmarks and tests that drive Tune or the sweep directly start."""
    import ray

    tune_output_off()
    ray_security.start_local_ray(num_cpus=num_cpus, num_gpus=num_gpus, log=log)
    try:
        yield
    finally:
        ray.shutdown()


def is_local(address: str) -> bool:
    """Ray's address "local": start a new Ray here rather than join one."""
    return address.strip().lower() == "local"


def check_shared_storage(cfg: SweepConfig, storage_path: str, artifact_store: str | None = None) -> None:
    """On a cluster of several nodes, Ray Tune's results and the trials' stored files must
    go where every node can write and the driver can read: a URI, or a path the config
    declares shared. Said before any trial starts."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or cfg.ray.shared_storage:
        return
    problems = []
    if "://" not in storage_path:
        problems.append(
            f"ray.storage_path: {storage_path} is a local path, but the Ray cluster has {len(nodes)} "
            "nodes, whose trials would write their results to their own disks; give a URI "
            "(s3://bucket/runs, gs://...), or a path on a mount every node shares and set "
            "ray.shared_storage: true (docs/cluster.md)"
        )
    if artifact_store and artifact_store != artifacts.NONE and artifacts.is_local(artifact_store):
        problems.append(
            f"artifacts.store: {artifact_store} is a local path, but the Ray cluster has {len(nodes)} "
            "nodes, whose trials would store their adapters on their own disks; give s3://BUCKET, "
            "or a path on a mount every node shares and set ray.shared_storage: true, or "
            "artifacts.store: none (docs/cluster.md)"
        )
    if problems:
        raise UserInputError(problems)


def reap_local_ray(study: optuna.Study, log: Log) -> int:
    """Stop the local Ray processes a dead driver of this sweep left on this host."""
    import psutil

    info = study.user_attrs.get(LOCAL_RAY_ATTR)
    if not info or info.get("host") != socket.gethostname() or psutil.pid_exists(info["driver_pid"]):
        return 0
    left: list[psutil.Process] = []
    for pid, created in info["procs"]:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:  # the same process, not a reused pid
                left += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    study.set_user_attr(LOCAL_RAY_ATTR, None)
    if left:
        log(f"stopped {len(left)} Ray process(es) left by the previous driver (pid {info['driver_pid']})")
    return len(left)
