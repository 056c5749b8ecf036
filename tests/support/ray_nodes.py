"""Ray nodes started with `ray start` on loopback for the cluster tests (test_cluster.py,
test_cluster_faults.py): the token every node and command runs with, free ports, the
nodes' processes, and stopping them."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
AUTH_VARS = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
# What the nodes and the user's commands run with: the clusters' token in a file of the
# user's only, named by RAY_AUTH_TOKEN_PATH, and token mode on. Filled by ``use_token`` (the
# ``cluster_token`` fixture) before a cluster test starts a node; empty until then.
ENV: dict[str, str] = {}


def use_token(folder: Path) -> Path:
    """Write the clusters' token into ``folder`` (a private temporary folder the fixture
    made), readable by the user only, and point ``ENV`` at it."""
    token = folder / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    ENV.clear()
    ENV.update({k: v for k, v in os.environ.items() if k not in AUTH_VARS})
    ENV.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"})
    return token


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports. The sockets stay bound until all are picked: one at a
    time, the kernel can hand out a just-closed port again (seen in CI: Ray refused a
    node whose client server and agent got the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ours(temp_dirs: list[Path]) -> list[psutil.Process]:
    """The processes of our Ray nodes (their command lines name our temp dirs) and children."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(str(d) in cmd for d in temp_dirs):
            found.append(proc)
            with contextlib.suppress(psutil.NoSuchProcess):
                found += proc.children(recursive=True)
    return found


def stop(temp_dirs: list[Path]) -> None:
    """Kill the Ray processes of these nodes and remove their temp dirs."""
    procs = ours(temp_dirs)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=20)
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)
