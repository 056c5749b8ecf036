"""The study storage (vlsweep/storages.py): Optuna's cache in front of the database, and
every call retried while the database is unreachable. The database is a real SQLite file
through SQLAlchemy; the lost connection is injected at the cursor (what a PostgreSQL
restart looks like to SQLAlchemy: an OperationalError). The real restart is a fault test:
tests/search/test_faults.py::test_postgresql_restarted_during_a_sweep."""

from __future__ import annotations

import logging
import sqlite3

import optuna
import pytest
from sqlalchemy import text

from tests.support.helpers import DatabaseOutage
from vlsweep.storages import open_storage


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setenv("VLSWEEP_STORAGE_RETRY_SECONDS", "30")
    monkeypatch.setattr("vlsweep.storages.time.sleep", lambda _s: None)  # the backoff, not the retry
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def test_it_is_optunas_cache_over_the_database(storage):
    url = str(storage.rdb.url)
    assert isinstance(storage, optuna.storages.BaseStorage)
    study = optuna.create_study(storage=storage, directions=["minimize", "maximize"])
    assert study._storage is storage  # Optuna takes it as it is
    for x in range(3):
        study.tell(study.ask(), [x, -x])
    assert [t.values for t in study.get_trials()] == [[0, 0], [1, -1], [2, -2]]
    uncached = optuna.load_study(study_name=study.study_name, storage=open_storage(url, cached=False))
    assert len(uncached.trials) == 3
    # A finished trial is read once, then served from Optuna's cache: a change behind the
    # cache's back (no process does this) shows which copy answers.
    with storage.rdb.engine.begin() as conn:
        conn.execute(text("UPDATE trial_values SET value = 9 WHERE objective = 0"))
    assert [t.values for t in study.get_trials()] == [[0, 0], [1, -1], [2, -2]]
    assert [t.values[0] for t in uncached.trials] == [9, 9, 9]  # the dashboard's: no cache
    fresh = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
    assert [t.values[0] for t in fresh.trials] == [9, 9, 9]


def test_a_lost_database_is_waited_for_and_nothing_is_lost(storage, caplog):
    study = optuna.create_study(storage=storage, directions=["minimize", "maximize"])
    outage = DatabaseOutage(storage)
    caplog.set_level(logging.WARNING, logger="vlsweep")
    for x in range(4):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        outage.left = 3  # each call of the trial's life meets a dead connection first
        trial.set_user_attr("k", x)
        outage.left = 2
        study.tell(trial, [x, -x])
    reread = optuna.load_study(study_name=study.study_name, storage=open_storage(str(storage.rdb.url)))
    assert [(t.state.name, t.values, t.user_attrs) for t in reread.trials] == [
        ("COMPLETE", [x, -x], {"k": x}) for x in range(4)
    ]
    assert "lost the study database" in caplog.text and "server closed the connection" in caplog.text
    assert "reachable again" in caplog.text


def test_bad_data_and_a_database_that_stays_away_are_not_waited_for(storage, monkeypatch):
    study = optuna.create_study(storage=storage, directions=["minimize", "maximize"])
    outage = DatabaseOutage(storage)
    outage.error, outage.left = sqlite3.DatabaseError("file is not a database"), 1
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.set_user_attr("k", 1)
    assert outage.left == 0  # tried once: bad data is not retried
    monkeypatch.setenv("VLSWEEP_STORAGE_RETRY_SECONDS", "0")
    outage.error, outage.left = sqlite3.OperationalError("server closed the connection"), 1
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.set_user_attr("k", 2)
