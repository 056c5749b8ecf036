"""The local Ray a sweep starts runs nobody's code but the user's: it listens on loopback
only, and its GCS refuses a client without the token (token auth, turned on by vlsweep,
with the token readable by the user only), on every path that starts one. Where the
installed Ray lacks a name that needs, vlsweep refuses to start (fails closed). Real
sweeps, real Ray; every connection goes to 127.0.0.1.

The tests that start Ray run with ``pytest -m integration`` (CI does).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.sweeps import edit_yaml, sweep_cfg
from vlsweep.errors import UserInputError
from vlsweep.search import backend, ray_security

HELD = Path(__file__).parents[1] / "support" / "held_driver.py"
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


@pytest.fixture(autouse=True)
def _ray_auth_mode_put_back():
    """Tests here move this process's Ray auth mode; the next test finds it as it was."""
    saved = os.environ.get("RAY_AUTH_MODE")
    yield
    ray_security._apply_auth_mode(saved or None, required=False)


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


@pytest.mark.integration
@pytest.mark.parametrize("how", ["default", "RAY_ADDRESS=local"])
def test_a_sweeps_local_ray_refuses_a_client_without_the_token(how, tmp_path, tiny_checkpoint, demo_data):
    """With no address, and with Ray's own "local" (which once took the join path and
    started a Ray listening on every interface)."""
    extra = {} if how == "default" else {"RAY_ADDRESS": "local"}
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
            env=_env(home, **extra),
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
        outward = [s for s in sockets if not ray_security.is_loopback(s[1])]
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


def test_the_token_is_made_readable_by_the_user_only_and_an_open_one_is_replaced(tmp_path, monkeypatch):
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    said: list[str] = []
    (tmp_path / ".ray").mkdir(mode=0o755)  # as Ray makes it
    ray_security.ensure_auth_token(said.append)
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and token.stat().st_mode & 0o777 == 0o600, said
    assert token.parent.stat().st_mode & 0o777 == 0o700
    first = token.read_text()
    ray_security.ensure_auth_token(said.append)
    assert token.read_text() == first and len(said) == 1, "a private token was replaced"
    # One readable by others may have been read: a new one, and the user told so.
    token.chmod(0o644)
    ray_security.ensure_auth_token(said.append)
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    assert token.read_text() != first, "a token others could read was kept"
    assert "readable by others (mode 644), so it may have been read: replaced it" in said[-1]
    second = token.read_text()
    token.chmod(0o640)  # readable by the group is readable by others too
    ray_security.ensure_auth_token(said.append)
    assert token.read_text() != second and "(mode 640)" in said[-1]
    # A token the user keeps elsewhere is Ray's to read: made there if absent, replaced
    # there if open, and the user told that what used it needs the new one.
    elsewhere = tmp_path / "secrets" / "ray_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(elsewhere))
    ray_security.ensure_auth_token(said.append)
    kept = token.read_text()
    assert elsewhere.stat().st_mode & 0o777 == 0o600 and elsewhere.read_text() != kept
    elsewhere.chmod(0o604)
    old = elsewhere.read_text()
    ray_security.ensure_auth_token(said.append)
    assert elsewhere.read_text() != old and "anything that used the old one" in said[-1]
    assert token.read_text() == kept, "the default token was touched for a named one"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    n = len(said)
    ray_security.ensure_auth_token(said.append)
    assert len(said) == n, "a token in RAY_AUTH_TOKEN needs no file"


def test_two_sweeps_starting_together_agree_on_one_token(tmp_path, monkeypatch):
    """Each ensure_auth_token holds a lock while it looks and writes: of several processes
    finding the same open token, one replaces it and the others keep that one."""
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("f" * 64)
    token.chmod(0o644)
    code = (
        "from vlsweep.search import ray_security as r; r.ensure_auth_token(print); "
        "print('TOKEN', open(r.auth_token_path()).read())"
    )
    env = _env(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    seen = {line.split()[1] for out in outs for line in out.splitlines() if line.startswith("TOKEN")}
    assert seen == {token.read_text()} and "f" * 64 not in seen, outs
    assert sum("replaced it" in out for out in outs) == 1, outs


def test_an_empty_or_unknown_auth_mode(monkeypatch, own_home):
    """RAY_AUTH_MODE="" counts as unset (Ray itself would take it as "not token" and start
    an open Ray); a value Ray does not know is an error, not a guess."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    monkeypatch.setenv("RAY_AUTH_MODE", "")
    assert ray_security.auth_mode() is None
    with ray_security._auth_for_start(ray_security.auth_mode()):
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert "RAY_AUTH_MODE" not in os.environ, "the empty value came back for the next Ray"
    monkeypatch.setenv("RAY_AUTH_MODE", " Token ")
    assert ray_security.auth_mode() == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with ray_security._auth_for_start(ray_security.auth_mode()):
        assert get_authentication_mode() == AuthenticationMode.DISABLED, "the user's choice was overridden"
    monkeypatch.setenv("RAY_AUTH_MODE", "off")
    with pytest.raises(UserInputError, match=r"RAY_AUTH_MODE='off' in the environment: .* unset it"):
        ray_security.auth_mode()


def test_a_join_sends_only_a_token_given_for_it(tmp_path, monkeypatch):
    """Joining runs in token mode only with a token given for the cluster (or the user's
    RAY_AUTH_MODE=token); otherwise in "disabled" mode, which keeps Ray from turning token
    mode on by itself for address "auto" (it would send ~/.ray/auth_token to whatever Ray
    "auto" finds, another user's on a shared machine), also after a local start left this
    process in token mode. The environment is the user's again afterwards."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    ray_security.ensure_auth_token(lambda _m: None)
    with ray_security._auth_for_start(None):
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    with ray_security.joining():
        assert get_authentication_mode() == AuthenticationMode.DISABLED
        assert os.environ["RAY_AUTH_MODE"] == "disabled", "Ray's own auto-enable would send the local token"
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN", "e" * 64)  # given for the cluster: sent
    with ray_security.joining():
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert "RAY_AUTH_MODE" not in os.environ and ray_security.token_source() == "RAY_AUTH_TOKEN"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # asked for: ~/.ray/auth_token is sent
    with ray_security.joining():
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_a_token_that_cannot_be_written_privately_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """A read-only folder (a mounted secret, say): a private token there is used as it is,
    without a lock file; one readable by others that cannot be replaced is exit 2 naming
    the path (/proc/version stands for it: world-readable, on a file system nobody, root
    included, can write)."""
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "secrets"
    folder.mkdir()
    token = folder / "ray_token"
    token.write_text("c" * 64)
    token.chmod(0o600)
    folder.chmod(0o500)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    try:
        said: list[str] = []
        ray_security.ensure_auth_token(said.append)
        assert said == [] and sorted(p.name for p in folder.iterdir()) == ["ray_token"]
    finally:
        folder.chmod(0o700)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/proc/version")
    with pytest.raises(UserInputError, match="RAY_AUTH_TOKEN_PATH /proc/version: cannot write a token"):
        ray_security.ensure_auth_token(said.append)


def test_a_failed_token_write_leaves_nothing_behind(tmp_path, monkeypatch):
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    token = tmp_path / "t" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ray_security.os, "replace", refuse)
    with pytest.raises(UserInputError, match="cannot write a token readable by you only .Permission denied"):
        ray_security.ensure_auth_token(lambda _m: None)
    assert [p.name for p in token.parent.iterdir()] == [".auth_token.lock"], "a copy of the token stayed"


def test_local_is_a_start_and_any_other_address_a_join():
    assert backend.is_local("local") and backend.is_local(" LOCAL ")
    assert not backend.is_local("auto") and not backend.is_local("ray://127.0.0.1:10001")


def test_a_cluster_gets_only_a_token_given_for_it_and_a_failed_join_says_what_to_check(tmp_path, monkeypatch):
    """The token of the user's local Rays (~/.ray/auth_token) is never sent to a cluster
    unasked; one named in RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN is. The hint after a failed
    join says which case it was."""
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_security.token_source() is None
    assert ray_security.token_hint().startswith("no Ray auth token was found here")
    ray_security.ensure_auth_token(lambda _m: None)  # as a local sweep makes it
    local = tmp_path / ".ray" / "auth_token"
    assert ray_security.token_source() is None, "the local Rays' token would go to the cluster"
    assert ray_security.token_hint().startswith(
        f"no token was sent: {local} holds the token of your local Rays"
    )
    missing = tmp_path / "cluster_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    assert ray_security.token_hint().startswith(f"RAY_AUTH_TOKEN_PATH names {missing}, which does not exist")
    missing.write_text("f" * 64)
    assert ray_security.token_source() == str(missing)
    assert ray_security.token_hint().startswith(f"the token from {missing} was sent")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_security.token_hint().startswith("RAY_AUTH_MODE=disabled is set here")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert ray_security.token_source() == str(local), "asked for with RAY_AUTH_MODE=token, it is sent"


# The Ray internals the locked start needs. Hiding any one must stop vlsweep from starting
# a Ray (fail closed), not start an open one or crash. (Config.initialize cannot be hidden:
# Config is an immutable type; hiding Config covers the lookup.)
LOCK_NAMES = [
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTERS_ENV_VAR"),
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    ("ray._raylet", "Config"),
    ("ray._raylet", "get_authentication_mode"),
    ("ray._raylet", "AuthenticationMode"),
    ("ray._raylet.AuthenticationMode", "TOKEN"),
]


def _owner(dotted: str):
    """The module, or the attribute of one, that holds a name."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            found = getattr(found, attr)
        return found
    raise LookupError(dotted)


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """A HOME of the test's own and no auth setting of the developer's."""
    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("module", "name"), LOCK_NAMES)
def test_a_ray_without_a_name_the_lock_needs_is_refused_before_it_starts(module, name, monkeypatch, own_home):
    import ray

    monkeypatch.delattr(_owner(module), name)
    before = ray_security._processes()
    with pytest.raises(ray_security.RayUnsafe) as err:
        ray_security.start_local_ray(num_cpus=1, log=lambda _m: None)
    said = str(err.value)
    assert f"Ray {ray.__version__}: {module}.{name} is missing" in said, said
    assert "pip install 'ray[tune]==2.60.*'" in said and "--address" in said, said
    assert isinstance(err.value, UserInputError), "the CLI's exit 2"
    assert not ray.is_initialized() and ray_security._processes() - before == set(), "a Ray was started"


@pytest.mark.parametrize(("module", "name"), [n for n in LOCK_NAMES if n[0].startswith("ray._raylet")])
def test_a_join_that_must_send_a_token_fails_closed_too(module, name, monkeypatch, own_home):
    """Joining with a token given for the cluster needs token mode in this process: a Ray
    where it cannot be set is refused, not joined without the token."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", "d" * 64)
    monkeypatch.delattr(_owner(module), name)
    with pytest.raises(ray_security.RayUnsafe, match=f"{module}.{name} is missing"), ray_security.joining():
        pass
    assert "RAY_AUTH_MODE" not in os.environ


def test_a_ray_init_without_the_node_address_or_with_tls_starts_no_ray(monkeypatch, own_home):
    """The loopback bind is ray.init's _node_ip_address: a Ray whose ray.init no longer
    takes it is refused (here a stand-in for such a release); with RAY_USE_TLS on, the
    plain-call token check cannot run, and vlsweep says so instead of starting."""
    import ray

    def init_without_node_address(*, address=None, num_cpus=None, num_gpus=None, **kwargs):
        if "_node_ip_address" in kwargs:
            raise TypeError("init() got an unexpected keyword argument '_node_ip_address'")
        raise AssertionError("not reached")

    monkeypatch.setattr(ray, "init", init_without_node_address)
    with pytest.raises(ray_security.RayUnsafe, match="ray.init takes no _node_ip_address, so vlsweep cannot"):
        ray_security.start_local_ray(num_cpus=1, log=lambda _m: None)
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(own_home))
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with pytest.raises(
        ray_security.RayUnsafe, match="RAY_USE_TLS is on.*unset RAY_USE_TLS for the local Ray"
    ):
        ray_security.start_local_ray(num_cpus=1, log=lambda _m: None)
    assert not ray.is_initialized()


def test_a_ray_without_authentication_error_still_gets_the_join_message(monkeypatch):
    import ray.exceptions

    assert ray.exceptions.AuthenticationError in ray_security.join_errors()
    monkeypatch.delattr(ray.exceptions, "AuthenticationError")
    assert ray_security.join_errors() == (ConnectionError,)


def test_a_socket_listening_beyond_loopback_is_found():
    """What the check after a start looks for: a real socket bound to every interface
    (listening, accepting nothing; no traffic) is reported, one on loopback is not."""
    import psutil

    code = (
        "import socket, sys\n"
        "wide, local = socket.socket(), socket.socket()\n"
        "wide.bind(('0.0.0.0', 0)); local.bind(('127.0.0.1', 0)); wide.listen(); local.listen()\n"
        "print(wide.getsockname()[1], local.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        wide, local = proc.stdout.readline().split()
        me = psutil.Process(proc.pid)
        found = ray_security.beyond_loopback(ray_security._listening([(me.pid, me.create_time())]))
        assert len(found) == 1 and found[0].endswith(f" on 0.0.0.0:{wide}"), found
        assert all(not ray_security.is_loopback(ip) for ip in ("0.0.0.0", "::", "10.1.2.3"))
        assert all(ray_security.is_loopback(ip) for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"))
        assert not any(f":{local}" in f for f in found)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.integration
def test_a_started_ray_that_does_not_ask_for_the_token_is_stopped(monkeypatch):
    """A Ray release that ignored the mode vlsweep sets would start an open Ray: the check
    after the start finds its GCS answering a call without a token, and stops it. (Here
    the Ray's processes are started with auth off behind vlsweep's back.)"""
    import ray

    real = ray_security._auth_for_start

    @contextlib.contextmanager
    def ignored(mode):
        with real(mode):
            os.environ["RAY_AUTH_MODE"] = "disabled"  # what the started processes see
            yield

    monkeypatch.setattr(ray_security, "_auth_for_start", ignored)
    before = ray_security._processes()
    with pytest.raises(ray_security.RayUnsafe, match="the Ray vlsweep started did not ask for the token"):
        ray_security.start_local_ray(num_cpus=1, log=lambda _m: None)
    assert not ray.is_initialized()
    import psutil

    left = ray_security._processes() - before
    psutil.wait_procs([psutil.Process(pid) for pid, _ in left if psutil.pid_exists(pid)], timeout=30)
    assert not [p for p, _ in left if psutil.pid_exists(p)], "the refused Ray left processes running"
