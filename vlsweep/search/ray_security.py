"""Ray locked to its user. Every Ray vlsweep starts runs with token authentication on and
listens on loopback only; joining a cluster sends a token only when one is given for it.

vlsweep sets both itself rather than trusting a Ray release's defaults, and checks the
result: after the start, every socket the new Ray processes listen on must be on loopback,
and its GCS must refuse a call that carries no token. Turning either on needs a few Ray
internals (named in ``_internal``). Where one is missing or has changed in the installed
Ray, vlsweep refuses to start (``RayUnsafe``, exit 2) instead of starting an open Ray.

The one way to start a local Ray is ``start_local_ray``: the sweep, the tests and the
benchmarks all use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vlsweep.errors import UserInputError

Log = Callable[[str], None]

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
LOOPBACK = "127.0.0.1"
# The Ray release whose internals this module was written and tested against.
TESTED_RAY = "2.60"
# A GCS method any client may call once authenticated: without a token, a GCS with token
# auth on answers UNAUTHENTICATED (measured with Ray 2.60, about 10 ms on loopback).
GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/CheckAlive"


class RayUnsafe(UserInputError):
    """vlsweep cannot start (or join) Ray locked as it must be; nothing was left running."""


def _ray_version() -> str:
    try:
        import ray

        return f"Ray {ray.__version__}"
    except ImportError:  # pragma: no cover - ray is a dependency
        return "Ray (not importable)"


def _unsafe(what: str, *, started: bool = False) -> RayUnsafe:
    why = (
        f"the Ray vlsweep started {what}, so vlsweep stopped it"
        if started
        else f"{what}, and vlsweep cannot lock a Ray to loopback and to your token without it"
    )
    return RayUnsafe(
        f"{_ray_version()}: {why}; vlsweep runs only a Ray locked that way: install the Ray it was "
        f"tested with (pip install 'ray[tune]=={TESTED_RAY}.*'), or start a Ray yourself with "
        "token auth on (docs/cluster.md) and pass its address with --address"
    )


def _internal(name: str) -> Any:
    """One of the Ray internals the locked start needs, by its dotted name, or RayUnsafe
    naming it. Every private Ray name this module uses goes through here."""
    import importlib

    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        pass
    try:
        return importlib.import_module(name)  # a module of its own
    except ImportError:
        raise _unsafe(f"{name} is missing") from None


# -- the auth mode ------------------------------------------------------------------------


def auth_mode() -> str | None:
    """The RAY_AUTH_MODE the user set: "token", "disabled", or None when unset or empty."""
    raw = os.environ.get(AUTH_MODE_VAR, "").strip().lower()
    if not raw:
        return None
    if raw not in ("token", "disabled"):
        raise UserInputError(
            f"{AUTH_MODE_VAR}={os.environ[AUTH_MODE_VAR]!r} in the environment: Ray knows the modes "
            "'token' and 'disabled'; unset it (vlsweep turns token auth on for the Ray it starts) "
            "or set it to token"
        )
    return raw


def _apply_auth_mode(mode: str | None, *, required: bool) -> None:
    """Put Ray's auth mode for this process, and the processes it starts, at ``mode``
    (None: unset). Ray reads the variable into its config once per process, when ray is
    imported, and caches it: the config is read again for the new value to count (as
    Ray's own ``ray.init`` does when it turns token auth on by default). Then checked.
    ``required``: a mode that cannot be set or confirmed is an error (RayUnsafe);
    otherwise (unsetting before a join that sends no token) it is left as Ray has it."""
    if mode is None:
        os.environ.pop(AUTH_MODE_VAR, None)
    else:
        os.environ[AUTH_MODE_VAR] = mode
    try:
        current = _internal("ray._raylet.get_authentication_mode")
        token = _internal("ray._raylet.AuthenticationMode").TOKEN
        config = _internal("ray._raylet.Config")
        if (current() == token) != (mode == "token"):
            config.initialize("")
        if (current() == token) != (mode == "token"):
            raise _unsafe(f"{AUTH_MODE_VAR}={mode} did not take in this process")
    except RayUnsafe:
        if required:
            raise


@contextlib.contextmanager
def _auth_for_start(mode: str | None) -> Iterator[None]:
    """Token auth on for the Ray started inside (unless the user disabled it on purpose:
    their choice stands). The environment is put back afterwards; the processes started
    keep the mode they started with, and so does this one while it stays connected."""
    saved = os.environ.get(AUTH_MODE_VAR)
    _apply_auth_mode(mode or "token", required=mode != "disabled")
    try:
        yield
    finally:
        # An empty value is not put back: Ray takes "" as "not token" when it starts a Ray.
        if saved:
            os.environ[AUTH_MODE_VAR] = saved
        else:
            os.environ.pop(AUTH_MODE_VAR, None)


def prepare_join() -> None:
    """Before joining an existing cluster: send the token the user gave for clusters.

    Ray sends a token only in token mode (a client without one, facing a cluster with token
    auth on, waits 30 s and reports a timeout). With ``RAY_AUTH_MODE`` unset and a token
    named explicitly (``RAY_AUTH_TOKEN``, or the file ``RAY_AUTH_TOKEN_PATH`` names), token
    mode is turned on for this process (a cluster without auth ignores the token; measured
    with Ray 2.60). ``~/.ray/auth_token`` alone is not sent: it is the token of the user's
    local Rays, and a cluster of someone else's must not receive it unasked (a local Ray
    this process started earlier does not change that). A mode the user set is kept.
    """
    mode = auth_mode() or ("token" if _explicit_token() else None)
    _apply_auth_mode(mode, required=mode == "token")


def join_errors() -> tuple[type[BaseException], ...]:
    """What a failed ``ray.init(address=...)`` raises: ConnectionError, and Ray's
    AuthenticationError where the installed Ray has it."""
    import ray

    auth_error = getattr(ray.exceptions, "AuthenticationError", None)
    return (ConnectionError,) + ((auth_error,) if isinstance(auth_error, type) else ())


# -- the token --------------------------------------------------------------------------


def auth_token_path() -> Path | None:
    """The file Ray reads its auth token from (None: the token is in ``RAY_AUTH_TOKEN``)."""
    if os.environ.get(TOKEN_VAR):
        return None
    return Path(os.environ.get(TOKEN_PATH_VAR) or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_auth_token(log: Log) -> None:
    """Make sure Ray finds a token that only this user can have read.

    Ray makes one itself when none exists, but with the default umask (0644 under a 0755
    ~/.ray, measured with Ray 2.60): on a shared login node every other user could read it
    and run code on this user's Ray. So the token is written here first, as Ray would
    write it (64 hex characters), mode 0600, in a 0700 ~/.ray. One found readable by
    others may already have been read, so it is replaced by a new one, and said so.
    """
    path = auth_token_path()
    if path is None:
        return
    default = TOKEN_PATH_VAR not in os.environ or not os.environ[TOKEN_PATH_VAR]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if default:
        path.parent.chmod(0o700)  # Ray's own folder for the token, made 0755 by Ray
    # Under a lock: two sweeps starting at the same moment agree on one token.
    with _locked(path.with_name(f".{path.name}.lock")):
        if path.is_file() and path.read_text().strip():
            mode = path.stat().st_mode & 0o777
            if not mode & 0o077:
                return
            _write_token(path)
            log(
                f"warning: Ray's auth token {path} was readable by others (mode {mode:o}), so it may "
                "have been read: replaced it with a new one, readable by you only"
                + (
                    ""
                    if default
                    else "; anything that used the old one (a cluster you join with it) needs the new one"
                )
                + ". A Ray already running with the old token keeps it until it stops"
            )
            return
        _write_token(path)
    log(f"made a Ray auth token in {path} (readable by you only); Ray's tools read it from there")


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_token(path: Path) -> None:
    """A new token, written whole to a private temp file and put in place in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, path)


def _explicit_token() -> bool:
    path = os.environ.get(TOKEN_PATH_VAR)
    return bool(os.environ.get(TOKEN_VAR)) or bool(path and Path(path).expanduser().is_file())


def token_source() -> str | None:
    """Where the token sent to a cluster comes from here (RAY_AUTH_TOKEN or a file), None
    when none is sent."""
    mode = (os.environ.get(AUTH_MODE_VAR) or "").strip().lower()
    if mode != "token" and not (mode == "" and _explicit_token()):
        return None
    path = auth_token_path()
    return TOKEN_VAR if path is None else str(path) if path.is_file() else None


def token_hint() -> str:
    """What to check about Ray's token when joining a cluster failed."""
    mode = (os.environ.get(AUTH_MODE_VAR) or "").strip().lower()
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
    named = os.environ.get(TOKEN_PATH_VAR)
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


# -- loopback ---------------------------------------------------------------------------


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Ray's node address for a start inside: 127.0.0.1, so that its GCS, raylet, agents
    and workers listen on loopback only.

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray maps a loopback address
    to the machine's outward one unless its "cluster" mode is off, which it reads from an
    environment variable once, at import (Ray 2.60). So both are set for the start (the
    environment for the processes Ray starts, the constant for this one) and put back
    after it, so that a later ``ray.init(address=...)`` in this process still finds its
    outward address.
    """
    constants = _internal("ray._private.ray_constants")
    var = _internal("ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR")
    saved_flag = _internal("ray._private.ray_constants.ENABLE_RAY_CLUSTER")
    if not isinstance(var, str) or not isinstance(saved_flag, bool):
        raise _unsafe("ray._private.ray_constants.ENABLE_RAY_CLUSTER(S_ENV_VAR) changed type")
    saved_env = os.environ.get(var)
    os.environ[var], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


# -- the start, and its check -----------------------------------------------------------


Proc = tuple[int, float]  # (pid, start time): a process, not a reused pid
Listener = tuple[str, str, int]  # (process name, address, port)


def _processes(*, this_one: bool = False) -> set[Proc]:
    """This process's descendants (and itself)."""
    import psutil

    me = psutil.Process()
    found = set()
    for proc in [me] * this_one + me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.add((proc.pid, proc.create_time()))
    return found


def _listening(procs: set[Proc] | list[Proc]) -> set[Listener]:
    """Every TCP socket ``procs`` listen on."""
    import psutil

    found = set()
    for pid, created in procs:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) > 1e-3:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def beyond_loopback(listeners: set[Listener]) -> list[str]:
    """Each of ``listeners`` beyond loopback, as "NAME on ADDRESS:PORT"."""
    return [f"{name} on {ip}:{port}" for name, ip, port in sorted(listeners) if not is_loopback(ip)]


def gcs_answers_without_token(gcs_address: str) -> str | None:
    """Call the GCS with no token: None when it refuses (token auth on), else what it did."""
    import grpc  # Ray's own RPC library: a call that carries no token, made the plain way

    # No proxy: the call stays on loopback whatever http_proxy says.
    channel = grpc.insecure_channel(gcs_address, options=[("grpc.enable_http_proxy", 0)])
    try:
        channel.unary_unary(GCS_PROBE_METHOD)(b"", timeout=30)
        return "it answered a call that carried no token"
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            return None
        return f"a call without a token got {err.code().name} instead of UNAUTHENTICATED"
    finally:
        channel.close()


def start_local_ray(*, num_cpus: int | None, num_gpus: int | None = None, log: Log) -> None:
    """Start a Ray on this machine, locked: token auth on (unless the user set
    RAY_AUTH_MODE=disabled: warned), listening on loopback only. Checked after the start;
    a Ray that is not as asked is stopped and RayUnsafe raised.

    Loopback alone would still let every other user of a shared machine in, the token
    alone would still show the ports to the network: both, always.
    """
    import ray

    mode = auth_mode()
    if mode == "disabled":
        log(
            f"warning: {AUTH_MODE_VAR}=disabled is set, so the local Ray runs without token auth: any "
            "user of this machine can run code as you through it; unset it to keep auth on "
            "(docs/cluster.md)"
        )
    else:
        ensure_auth_token(log)
    log("starting Ray (local, loopback only) ...")
    before = _listening(_processes(this_one=True))
    with _loopback(), _auth_for_start(mode):
        ray.init(
            address="local",  # a new Ray, whatever RAY_ADDRESS says
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            _node_ip_address=LOOPBACK,
        )
    try:
        _check_locked(before, token=mode != "disabled")
    except BaseException:
        ray.shutdown()
        raise


def _check_locked(before: set[Listener], *, token: bool) -> None:
    """The Ray just started listens on loopback only (its processes, and the Ray worker in
    this one: the sockets that were not there before), and its GCS asks for the token."""
    import ray

    outward = beyond_loopback(_listening(_processes(this_one=True)) - before)
    if outward:
        raise _unsafe(f"listened beyond loopback ({', '.join(outward)})", started=True)
    if token:
        answered = gcs_answers_without_token(ray.get_runtime_context().gcs_address)
        if answered is not None:
            raise _unsafe(f"did not ask for the token ({answered})", started=True)
