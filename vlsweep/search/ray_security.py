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
import tempfile
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


def _unsafe(what: str, *, started: bool = False, fix: str | None = None) -> RayUnsafe:
    why = (
        f"the Ray vlsweep started {what}, so vlsweep stopped it"
        if started
        else f"{what}, so vlsweep cannot start a Ray it can check is locked to loopback and to your "
        "token, and starts none"
    )
    fix = fix or (
        f"install the Ray vlsweep was tested with (pip install 'ray[tune]=={TESTED_RAY}.*'), or start "
        "a Ray yourself with token auth on (docs/cluster.md) and pass its address with --address"
    )
    return RayUnsafe(f"{_ray_version()}: {why}; {fix}")


def _internal(name: str) -> Any:
    """One of the Ray internals the locked start needs, by its dotted name (a module, or an
    attribute of one, nested or not), or RayUnsafe naming the first part that is missing.
    Every private Ray name this module uses goes through here."""
    import importlib

    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for i in range(split, len(parts)):
            if not hasattr(found, parts[i]):
                raise _unsafe(f"{'.'.join(parts[: i + 1])} is missing")
            found = getattr(found, parts[i])
        return found
    raise _unsafe(f"{name} is missing")


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
    otherwise the variable alone is set, which Ray's own checks at ``ray.init`` read."""
    if mode is None:
        os.environ.pop(AUTH_MODE_VAR, None)
    else:
        os.environ[AUTH_MODE_VAR] = mode
    try:
        current = _internal("ray._raylet.get_authentication_mode")
        token = _internal("ray._raylet.AuthenticationMode.TOKEN")
        reread = _internal("ray._raylet.Config.initialize")
        if (current() == token) != (mode == "token"):
            reread("")
        if (current() == token) != (mode == "token"):
            raise _unsafe(f"{AUTH_MODE_VAR}={mode} did not take in this process")
    except RayUnsafe:
        if required:
            raise


@contextlib.contextmanager
def _auth_mode_for(mode: str | None, *, required: bool) -> Iterator[None]:
    """Ray's auth mode at ``mode`` inside; the environment put back afterwards (the Ray
    processes started or joined inside keep their mode, and so does this process while it
    stays connected). An empty value is not put back: Ray takes "" as "not token"."""
    saved = os.environ.get(AUTH_MODE_VAR)
    try:
        _apply_auth_mode(mode, required=required)
        yield
    finally:
        if saved:
            os.environ[AUTH_MODE_VAR] = saved
        else:
            os.environ.pop(AUTH_MODE_VAR, None)


def _auth_for_start(mode: str | None) -> contextlib.AbstractContextManager[None]:
    """Token auth on for the Ray started inside, unless the user disabled it on purpose
    (their choice stands)."""
    return _auth_mode_for(mode or "token", required=mode != "disabled")


def joining() -> contextlib.AbstractContextManager[None]:
    """Around joining an existing cluster: send the token the user gave for clusters, and
    no other.

    Ray sends a token only in token mode (a client without one, facing a cluster with token
    auth on, waits 30 s and reports a timeout). With ``RAY_AUTH_MODE`` unset and a token
    named explicitly (``RAY_AUTH_TOKEN``, or the file ``RAY_AUTH_TOKEN_PATH`` names), token
    mode is on for the join (a cluster without auth ignores the token; measured with Ray
    2.60). ``~/.ray/auth_token`` alone is not sent: it is the token of the user's local
    Rays, and a cluster of someone else's must not receive it unasked. So without a token
    given, the join runs with the mode "disabled": Ray itself would otherwise turn token
    mode on for ``address="auto"`` whenever that file exists, and ``auto`` can find another
    user's Ray on a shared machine. A mode the user set is kept.
    """
    mode = auth_mode() or ("token" if _explicit_token() else "disabled")
    return _auth_mode_for(mode, required=mode == "token")


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
    write it (64 hex characters), mode 0600 (in ~/.ray, made 0700). One found readable by
    others may already have been read, so it is replaced by a new one, and said so. A
    token that cannot be written or replaced is an error (exit 2): no Ray is started.
    """
    path = auth_token_path()
    if path is None or _is_private(_token_mode(path)):
        return  # in RAY_AUTH_TOKEN, or a token only this user can read: nothing to write
    default = not os.environ.get(TOKEN_PATH_VAR)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if default:
            path.parent.chmod(0o700)  # Ray's own folder for the token, made 0755 by Ray
        # Under a lock, looked at again: two sweeps starting at the same moment agree on one.
        with _locked(path.with_name(f".{path.name}.lock")):
            found = _token_mode(path)
            if _is_private(found):
                return  # another sweep made it meanwhile
            _write_token(path)
    except OSError as err:
        raise UserInputError(
            f"{TOKEN_PATH_VAR if not default else 'Ray auth token'} {path}: cannot write a token "
            f"readable by you only ({err.strerror or err}); vlsweep starts a Ray only with one: "
            f"point {TOKEN_PATH_VAR} at a file in a folder of yours, or set {TOKEN_VAR}"
        ) from None
    if found is None:
        log(f"made a Ray auth token in {path} (readable by you only); Ray's tools read it from there")
        return
    log(
        f"warning: Ray's auth token {path} was readable by others (mode {found:o}), so it may have "
        "been read: replaced it with a new one, readable by you only"
        + (
            ""
            if default
            else "; anything that used the old one (a cluster you join with it) needs the new one"
        )
        + ". A Ray already running with the old token keeps it until it stops"
    )


def _token_mode(path: Path) -> int | None:
    """The permission bits of the token file at ``path`` (None: no token there)."""
    try:
        if not path.is_file() or not path.read_text().strip():
            return None
        return path.stat().st_mode & 0o777
    except OSError:
        return None


def _is_private(mode: int | None) -> bool:
    return mode is not None and not mode & 0o077


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_token(path: Path) -> None:
    """A new token, written whole to a new private file (mkstemp: mode 0600, never an
    existing file or a link) and put in place in one step; nothing left behind on error."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    """Every TCP socket ``procs`` listen on. A process that has exited is skipped; one whose
    sockets cannot be read is an error (RayUnsafe): the check would not see them."""
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
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.Error as err:
            raise _unsafe(f"the sockets of process {pid} cannot be read here ({err})") from None
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
    if mode != "disabled" and os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        raise _unsafe(
            "RAY_USE_TLS is on, and vlsweep checks the token of the Ray it starts with a plain call",
            fix="unset RAY_USE_TLS for the local Ray (it listens on loopback only), or start a Ray "
            "yourself with TLS and token auth on (docs/cluster.md) and pass its address with --address",
        )
    log("starting Ray (local, loopback only) ...")
    before = _listening(_processes(this_one=True))
    with _loopback(), _auth_for_start(mode):
        try:
            ray.init(
                address="local",  # a new Ray, whatever RAY_ADDRESS says
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                _node_ip_address=LOOPBACK,
            )
        except TypeError as err:  # a Ray whose ray.init no longer takes the node address
            if "_node_ip_address" not in str(err):
                raise
            raise _unsafe("ray.init takes no _node_ip_address") from None
    try:
        _check_locked(before, token=mode != "disabled")
    except BaseException:
        ray.shutdown()
        raise


def _check_locked(before: set[Listener], *, token: bool) -> None:
    """The Ray just started listens on loopback only (its processes, and the Ray worker in
    this one: the sockets that were not there before), and its GCS asks for the token."""
    import ray

    gcs = ray.get_runtime_context().gcs_address
    new = _listening(_processes(this_one=True)) - before
    # The check must see what it checks: the GCS's own socket among those found.
    if not any(gcs.endswith(f":{port}") for _, _, port in new):
        raise _unsafe(
            f"could not be checked: its GCS ({gcs}) was not among the listening sockets found", started=True
        )
    outward = beyond_loopback(new)
    if outward:
        raise _unsafe(f"listened beyond loopback ({', '.join(outward)})", started=True)
    if token:
        answered = gcs_answers_without_token(gcs)
        if answered is not None:
            raise _unsafe(f"did not ask for the token ({answered})", started=True)
