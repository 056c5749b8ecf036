"""A PostgreSQL password given through the environment never lands in anything vlsweep
writes: study and trial attrs, Ray's results, checkpoints and logs, reports, exports."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.support.postgres import fresh_pg_database
from tests.support.sweeps import edit_yaml, sweep_cfg, vlsweep

pytestmark = pytest.mark.integration


def _canary_storage() -> tuple[str, str]:
    """A role whose password is a fresh canary, owning a fresh database: its URL and the canary."""
    import sqlalchemy

    admin_url = fresh_pg_database()
    canary = f"canary-{secrets.token_hex(8)}"
    role = f"r{secrets.token_hex(4)}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{canary}'"))
        conn.execute(sqlalchemy.text(f"GRANT ALL ON SCHEMA public TO {role}"))
    engine.dispose()
    base, db = admin_url.rsplit("/", 1)
    host = base.split("@", 1)[1]
    return f"postgresql+psycopg2://{role}:{canary}@{host}/{db}", canary


def _run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 400) -> str:
    proc = vlsweep(*args, cwd=cwd, env=env)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (args, out[-3000:])
    return out


def test_a_canary_password_never_reaches_a_file(tmp_path, tiny_checkpoint, demo_data):
    url, canary = _canary_storage()
    started = time.time()
    # The password arrives only in $VLSWEEP_STORAGE: no PGPASSWORD, nothing on a command line.
    env = {"VLSWEEP_STORAGE": url, "PGPASSWORD": ""}
    path = sweep_cfg(tmp_path, tiny_checkpoint("qwen2_vl"), demo_data, trials=4)
    edit_yaml(path, budget={"steps": 20, "eval_every": 10})
    outputs = []

    # A sweep killed while trials run, then resumed: every writer of the sweep runs.
    proc = vlsweep("launch", str(path), cwd=tmp_path, env=env)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            states = [t.state for t in optuna.load_study(study_name="t", storage=url).get_trials()]
        except Exception:
            continue
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    outputs.append(proc.communicate(timeout=30)[0])
    outputs.append(_run("resume", "t", cwd=tmp_path, env=env))
    outputs.append(_run("status", "t", cwd=tmp_path, env=env))
    outputs.append(_run("report", "t", "-o", str(tmp_path / "report.html"), cwd=tmp_path, env=env))
    # --force: the swift export refuses the tiny checkpoint (its image token is not Qwen's);
    # forced, it still writes every file, and those must hold no password either.
    for fmt in ("vlsweep", "llamafactory", "swift", "peft"):
        out_dir = str(tmp_path / f"export-{fmt}")
        outputs.append(_run("export", "t", "--format", fmt, "--force", "-o", out_dir, cwd=tmp_path, env=env))

    study = optuna.load_study(study_name="t", storage=url)
    assert len([t for t in study.get_trials() if t.state == TrialState.COMPLETE]) >= 4
    # The study's own records.
    records = repr(study.user_attrs) + repr(study._storage.get_study_system_attrs(study._study_id))
    records += repr([(t.user_attrs, t.system_attrs, t.params) for t in study.get_trials()])
    assert canary not in records
    assert all(canary not in out for out in outputs)
    # Every file the commands wrote: runs/ (Ray results, checkpoints, TensorBoard), the
    # report, the exports; and Ray's session logs and state from this test.
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    for root in (Path("/tmp/ray"), Path.home() / ".ray"):
        if root.exists():
            files += [f for f in root.rglob("*") if f.is_file() and not f.is_symlink() and _newer(f, started)]
    assert len(files) > 50 and any(f.suffix == ".html" for f in files)
    leaked = [str(f) for f in files if canary.encode() in _read(f)]
    assert leaked == []


def _newer(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a socket or a file that went away
        return b""
