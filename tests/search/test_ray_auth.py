"""The local Ray a sweep starts runs nobody's code but the user's: it listens on loopback
only, and its GCS refuses a client without the token (Ray's token auth, on by default,
with the token readable by the user only). Real sweep, real Ray; every connection goes to
127.0.0.1.

The sweep's test runs with ``pytest -m integration`` (CI does).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.search.sweeps import edit_yaml, sweep_cfg
from vlsweep.search import backend

HELD = Path(__file__).with_name("held_driver.py")
AUTH_VARS = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
CLUSTER_MODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A client that connects to a Ray and runs one task there (asking for no CPU, so the
# trials holding them all cannot keep it waiting), as an intruder would try.
CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print("TASK", ray.get(ray.remote(num_cpus=0)(lambda: "ran").remote(), timeout=60), flush=True)
"""
REFUSED = "Authentication token is missing or incorrect"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS | {CLUSTER_MODE}}
    return {**env, "HOME": str(home), **extra}


def _client(address: str, env: dict[str, str]) -> str:
    # Ray maps 127.0.0.1 to the machine's outward address unless its cluster mode is off:
    # with it off, the client's traffic stays on loopback.
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, address],
        env={**env, CLUSTER_MODE: "0"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return out.stdout + out.stderr


def _listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``root``'s tree."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return found


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.integration
def test_a_sweeps_local_ray_refuses_a_client_without_the_token(tmp_path, tiny_checkpoint, demo_data):
    home, intruder = tmp_path / "home", tmp_path / "intruder"
    home.mkdir()
    intruder.mkdir()
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=2)
    edit_yaml(path, budget={"steps": 4, "eval_every": 2})
    held = tmp_path / "held"
    held.mkdir()
    log = tmp_path / "driver.log"
    with log.open("w") as out:  # a file, not a pipe: a chatty driver never blocks on it
        driver = subprocess.Popen(
            [sys.executable, str(HELD), str(path), f"sqlite:///{tmp_path / 'db.sqlite'}", str(held)],
            cwd=tmp_path,
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 300
        while not (held / "ready").exists():
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the sweep never reported a first evaluation"
            time.sleep(0.5)
        gcs = json.loads((held / "ready").read_text())["gcs_address"]
        sockets = _listening(psutil.Process(driver.pid))
        assert any(name == "gcs_server" for name, _, _ in sockets), sockets
        outward = [s for s in sockets if not _loopback(s[1])]
        assert not outward, f"Ray listens beyond loopback: {outward}"
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600 and (home / ".ray").stat().st_mode & 0o777 == 0o700
        ports = sorted({port for name, _, port in sockets if name == "gcs_server"})
        assert any(gcs.endswith(f":{p}") for p in ports), (gcs, ports)
        for port in ports:
            address = f"127.0.0.1:{port}"
            for label, env in {
                "no token, empty HOME": _env(intruder),
                "a wrong token": _env(intruder, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
            }.items():
                out = _client(address, env)
                assert "TASK" not in out, f"{label}: a client ran a task on the sweep's Ray"
                assert REFUSED in out, f"{label}: not refused for the token:\n{out[-2000:]}"
        # The refusal is the token's: the user's own client, with it, runs a task.
        out = _client(f"127.0.0.1:{ports[0]}", _env(home, RAY_AUTH_MODE="token"))
        assert "TASK ran" in out, out[-2000:]
    finally:
        (held / "release").touch()
    driver.wait(timeout=300)
    assert driver.returncode == 0, log.read_text()[-3000:]
    assert "made a Ray auth token in" in log.read_text(), log.read_text()[-3000:]


def test_the_token_is_made_readable_by_the_user_only_and_an_open_one_is_closed(tmp_path, monkeypatch):
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    said: list[str] = []
    backend.ensure_auth_token(said.append)
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and token.stat().st_mode & 0o777 == 0o600, said
    first = token.read_text()
    backend.ensure_auth_token(said.append)
    assert token.read_text() == first and len(said) == 1, "an existing token was replaced"
    token.chmod(0o644)
    backend.ensure_auth_token(said.append)
    assert token.stat().st_mode & 0o777 == 0o600 and "it was mode 644" in said[-1]
    # A token the user keeps elsewhere is Ray's to read, and ours to leave there.
    elsewhere = tmp_path / "secrets" / "ray_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(elsewhere))
    backend.ensure_auth_token(said.append)
    assert elsewhere.stat().st_mode & 0o777 == 0o600 and token.read_text() == first
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    n = len(said)
    backend.ensure_auth_token(said.append)
    assert len(said) == n, "a token in RAY_AUTH_TOKEN needs no file"


def test_a_cluster_gets_only_a_token_given_for_it_and_a_failed_join_says_what_to_check(tmp_path, monkeypatch):
    """The token of the user's local Rays (~/.ray/auth_token) is never sent to a cluster
    unasked; one named in RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN is. The hint after a failed
    join says which case it was."""
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert backend.token_source() is None
    assert backend.token_hint().startswith("no Ray auth token was found here")
    backend.ensure_auth_token(lambda _m: None)  # as a local sweep makes it
    local = tmp_path / ".ray" / "auth_token"
    assert backend.token_source() is None, "the local Rays' token would go to the cluster"
    assert backend.token_hint().startswith(f"no token was sent: {local} holds the token of your local Rays")
    missing = tmp_path / "cluster_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    assert backend.token_hint().startswith(f"RAY_AUTH_TOKEN_PATH names {missing}, which does not exist")
    missing.write_text("f" * 64)
    assert backend.token_source() == str(missing)
    assert backend.token_hint().startswith(f"the token from {missing} was sent")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert backend.token_hint().startswith("RAY_AUTH_MODE=disabled is set here")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert backend.token_source() == str(local), "asked for with RAY_AUTH_MODE=token, it is sent"
