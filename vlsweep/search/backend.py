"""The Ray backend of a sweep: starting or joining Ray, stopping the local Ray processes a
killed driver left behind, what a trial asks Ray for and whether any node can hold it,
and why a pending trial waits.

Everything here talks to Ray; nothing here knows Optuna beyond recording on the study.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from vlsweep import artifacts
from vlsweep.errors import UserInputError
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
    """What each trial asks Ray for, in Ray's resource names (memory in bytes)."""
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

    scaling = autoscaling(cfg)
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


def _fits_times(node: dict[str, float], request: dict[str, float]) -> int:
    """How many trials a node's resources hold at once. In Ray's own fixed-point units
    (1e-4 of a resource), since float floor division gets 1.0 // 0.2 = 4."""
    return min(round(node.get(k, 0.0) * 10_000) // round(v * 10_000) for k, v in request.items())


def waiting_reason(request: dict[str, float], scaling: bool, active: int) -> str:
    """Why a pending trial is not running yet, for the progress line. ``active`` counts the
    running and pending trials: while the cluster's nodes can hold that many, the pending
    ones are being started (Ray has already reserved what they asked for, so the free
    resources alone would say "waiting")."""
    import ray

    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        free = ray.available_resources()
    except Exception:
        return ""
    room = sum(_fits_times(node, request) for node in nodes) if request else active
    if active <= room:
        return "starting"
    return (
        f"waiting for resources: each asks for {describe_resources(request, tuple(request))}, "
        f"free now {describe_resources(free, tuple(request))}"
        + ("; the autoscaler may add nodes" if scaling else "")
    )


def auth_token_path() -> Path | None:
    """The file Ray reads its auth token from (None: the token is in ``RAY_AUTH_TOKEN``)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_auth_token(log: Log) -> None:
    """Make sure Ray finds a token, readable by this user only.

    Ray makes one itself when none exists, but with the default umask (0644 under a 0755
    ~/.ray, measured with Ray 2.60): on a shared login node every other user could read it
    and run code on this user's Ray. So the token is written here first, as Ray would
    write it (64 hex characters), with mode 0600; one found readable by others is made
    0600 too, and said so.
    """
    path = auth_token_path()
    if path is None:
        return
    if path.is_file() and path.read_text().strip():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(0o600)
            log(f"made Ray's auth token {path} readable by you only (it was mode {mode:o})")
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole to a private temp file, then put in place in one step: a second sweep
    # starting at the same moment finds either no token or a complete one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        if path.exists():  # an empty file: replaced
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another sweep's token got there first: keep that one
    except FileExistsError:
        return
    finally:
        tmp.unlink(missing_ok=True)
    log(f"made a Ray auth token in {path} (readable by you only); Ray's tools read it from there")


def use_token_if_found() -> None:
    """Before joining an existing cluster: send the token the user gave for clusters.

    Ray sends a token only with RAY_AUTH_MODE=token exported (a client without it, facing a
    cluster with token auth on, waits 30 s and reports a timeout). With the variable unset
    and a token named explicitly (RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH names),
    token mode is turned on for this process (a cluster without auth ignores the token;
    measured with Ray 2.60). ``~/.ray/auth_token`` alone is not sent: it is the token of
    the user's local Rays, and a cluster of someone else's must not receive it unasked.
    A mode the user set is left as it is.
    """
    if "RAY_AUTH_MODE" in os.environ or not _explicit_token():
        return
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _explicit_token() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or bool(path and Path(path).expanduser().is_file())


def token_source() -> str | None:
    """Where the token sent to a cluster comes from here (RAY_AUTH_TOKEN or a file), None
    when none is sent."""
    mode = (os.environ.get("RAY_AUTH_MODE") or "").lower()
    if mode != "token" and not (mode == "" and _explicit_token()):
        return None
    path = auth_token_path()
    return "RAY_AUTH_TOKEN" if path is None else str(path) if path.is_file() else None


def token_hint() -> str:
    """What to check about Ray's token when joining a cluster failed."""
    mode = (os.environ.get("RAY_AUTH_MODE") or "").lower()
    sent = token_source()
    path = auth_token_path()
    how = (
        "put the cluster's token in a file of yours (mode 600) and set RAY_AUTH_TOKEN_PATH to it, "
        "or set RAY_AUTH_TOKEN to it, or copy it into ~/.ray/auth_token and export "
        'RAY_AUTH_MODE=token (docs/cluster.md, "Ray\'s token authentication")'
    )
    if mode == "disabled":
        return (
            "RAY_AUTH_MODE=disabled is set here, and a cluster with Ray's token auth on (Ray's "
            f"default since 2.60) refuses a client without its token: unset it and {how}"
        )
    if sent is not None:
        return (
            f"the token from {sent} was sent; if the cluster runs with token auth, check that it is "
            "the cluster's token; otherwise that the address is right and its port reachable from here"
        )
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named and path is not None and not path.is_file():
        return f"RAY_AUTH_TOKEN_PATH names {path}, which does not exist: {how}"
    if path is not None and path.is_file():
        return (
            f"no token was sent: {path} holds the token of your local Rays, which is sent to a "
            f"cluster only when you ask; if the cluster runs with token auth, {how}; otherwise "
            "check that the address is right and its port reachable from here"
        )
    return (
        "no Ray auth token was found here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); "
        f"if the cluster runs with token auth (Ray's default since 2.60), {how}; otherwise check "
        "that the address is right and its port reachable from here"
    )


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Start the local Ray with 127.0.0.1 as its node address, so that its GCS, raylet,
    agents and workers listen on loopback only.

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray maps a loopback address
    to the machine's outward one unless its "cluster" mode is off, which it reads from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import (Ray 2.60). So both are set for the
    start (the environment for the processes Ray starts, the constant for this one) and
    put back after it, so that a later ``ray.init(address=...)`` in this process still
    finds its outward address.
    """
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


def ray_init(cfg: SweepConfig, address: str | None, log: Log, study: optuna.Study) -> bool:
    """Start (or join) Ray; True when this call started a local Ray that we must stop.

    A local Ray keeps Ray's token auth on (its default since 2.60; never turned off here)
    and listens on loopback only: loopback alone would still let every other user of a
    shared machine in, the token alone would still show the ports to the network.
    """
    import ray

    if ray.is_initialized():
        return False
    # Inside `ray job submit`, the job's cluster is RAY_ADDRESS.
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is not None:
        log(f"joining Ray at {address} ...")
        use_token_if_found()
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ray.exceptions.AuthenticationError) as err:
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
            msg = f"cannot join the Ray cluster at {address} ({last}); {token_hint()}"
            raise UserInputError(msg) from None
        return False
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":
        ensure_auth_token(log)
    else:
        log(
            f"warning: RAY_AUTH_MODE={mode} is set, so the local Ray runs without token auth: any "
            "user of this machine can run code as you through it; unset it to keep auth on "
            "(docs/cluster.md)"
        )
    log("starting Ray (local, loopback only) ...")
    with loopback_node():
        ray.init(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus, _node_ip_address="127.0.0.1", **kwargs)
    # The local Ray's processes (GCS, raylet, agents) are this driver's children. Some of
    # them outlive a SIGKILLed driver and ignore SIGTERM (measured with Ray 2.60), so we
    # record them on the study; the next driver of this sweep stops what is left.
    import psutil

    procs = [[p.pid, p.create_time()] for p in psutil.Process().children(recursive=True)]
    record = {"host": socket.gethostname(), "driver_pid": os.getpid(), "procs": procs}
    study.set_user_attr(LOCAL_RAY_ATTR, record)
    return True


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
