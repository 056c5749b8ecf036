"""Helpers the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def train_config(model: Path | str, data: Path, **overrides) -> dict:
    """A train config dict on the given checkpoint and dataset directory."""
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data / "train.jsonl"), "val": str(data / "val.jsonl")},
        "budget": {"steps": 2, "batch_size": 4, "max_new_tokens": 8},
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def wait_for_http(url: str, proc, seconds: float = 30.0) -> bytes:
    """The body at ``url`` once the server process ``proc`` answers; fails if it dies first."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            assert time.time() < deadline and proc.poll() is None, f"nothing answered at {url}"
            time.sleep(0.3)


def swift_argv(script: str) -> list[str]:
    """The ``swift sft`` command of an exported swift_sft.sh, as argv (without ``"$@"``)."""
    import shlex

    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("swift sft"))
    argv = shlex.split(" ".join(x.rstrip("\\") for x in lines[start:]))
    return [a for a in argv if a != "$@"]


class DatabaseOutage:
    """The next ``left`` SQL statements of ``storage``'s database fail as a dropped
    connection does (to SQLAlchemy, a PostgreSQL restart is an OperationalError), or with
    ``error``; ``statements`` counts every statement sent."""

    def __init__(self, storage):
        import sqlite3

        from sqlalchemy import event

        self.left, self.statements = 0, 0
        self.error: Exception = sqlite3.OperationalError("server closed the connection")
        event.listen(storage.rdb.engine, "before_cursor_execute", self._execute)

    def _execute(self, *_args):
        self.statements += 1
        if self.left:
            self.left -= 1
            raise self.error
