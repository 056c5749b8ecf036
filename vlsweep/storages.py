"""Where a study lives: the storage URL (``--storage``, the config, ``$VLSWEEP_STORAGE``),
masked for messages, and the storage itself, which rides out a database restart. What
both the sweep's driver and every reader (status, report, dashboard, export) open.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

import optuna

from vlsweep.errors import UserInputError

_log = logging.getLogger("vlsweep")
DEFAULT_STORAGE = "sqlite:///vlsweep.db"
STORAGE_ENV = "VLSWEEP_STORAGE"


def storage_url(cli: str | None = None, config: str | None = None) -> str:
    """--storage, then the config's ``storage``, then $VLSWEEP_STORAGE, then the SQLite default."""
    return cli or config or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it
        return "<storage URL>"


def strip_password(url: str) -> str:
    """The URL without its password (libpq then reads PGPASSWORD where it runs)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=None).render_as_string(hide_password=False)


def open_storage(
    url: str, *, kind: type[optuna.storages.RDBStorage] | None = None
) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url`` that rides out a database restart
    (``ResilientStorage``); a PostgreSQL password may come from PGPASSWORD.

    ``kind``: a subclass of ``ResilientStorage`` to open instead (the sweep driver's,
    ``search.driver_storage.DriverStorage``); everything else (status, report, dashboard)
    reads the database through ``ResilientStorage``.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserInputError(
            f"--storage: {masked(url)!r} is not an SQLAlchemy URL (e.g. {DEFAULT_STORAGE})"
        ) from None
    kwargs: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        # Several processes (driver, dashboard, status) share the file.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        storage = (kind or ResilientStorage)(url, engine_kwargs=kwargs)
        if sqlite and parsed.database not in (None, "", ":memory:"):
            _sqlite_wal(storage)
        return storage
    except ImportError as exc:
        raise UserInputError(
            f"--storage {masked(url)}: the database driver is not installed ({exc}); "
            "for PostgreSQL: pip install 'vlsweep[postgres]'"
        ) from None
    except Exception as exc:
        # SQLAlchemy's messages can quote the URL; never echo a password.
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if parsed.password:
            text = text.replace(parsed.password, "***")
        server = f"the database server at {parsed.host}:{parsed.port or 5432}" if parsed.host else "it"
        raise UserInputError(
            f"--storage {masked(url)}: cannot open {server}: {text}; check that the server is up "
            "and reachable from here, and the user, password (PGPASSWORD) and database name"
        ) from None


# -- a storage that rides out a database restart --------------------------------------------

# How long a sweep waits for its database to come back before giving up (a PostgreSQL
# restart or failover takes seconds; a sweep that runs for days should not die of it).
STORAGE_RETRY_ENV = "VLSWEEP_STORAGE_RETRY_SECONDS"
STORAGE_RETRY_SECONDS = 300.0


def _transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not bad data or a broken schema."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sa.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (sa.OperationalError, sa.InterfaceError))


class ResilientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, retrying each call while the database is unreachable.

    Optuna's own RDBStorage raises on the first dropped connection, which would end a
    days-long sweep because PostgreSQL restarted. ``pool_pre_ping`` replaces dead pooled
    connections; this retries the call itself, with backoff, for up to
    ``$VLSWEEP_STORAGE_RETRY_SECONDS`` (300 s). Our own few lines rather than a retry
    library: what matters is which SQLAlchemy errors are transient and the one message
    while waiting. Opening the storage is not retried: a database that is down at start
    is an error the user should see at once. A write whose commit reached the server just
    before the connection died may be applied twice; trial writes here are set-attribute
    and set-state calls, for which that is harmless.
    """

    _local = threading.local()

    def _retry(self, method: Any, args: tuple, kwargs: dict) -> Any:
        if getattr(self._local, "active", False):  # the outer call retries the whole thing
            return method(self, *args, **kwargs)
        limit = float(os.environ.get(STORAGE_RETRY_ENV, STORAGE_RETRY_SECONDS))
        deadline, delay, warned = time.monotonic() + limit, 0.5, False
        self._local.active = True
        try:
            while True:
                try:
                    result = method(self, *args, **kwargs)
                    if warned:
                        _log.warning("vlsweep: the study database is reachable again")
                    return result
                except Exception as exc:
                    if not _transient(exc) or time.monotonic() + delay > deadline:
                        raise
                    if not warned:
                        _log.warning(
                            "vlsweep: lost the study database (%s); retrying for up to %.0f s",
                            str(getattr(exc, "__cause__", None) or exc).strip().splitlines()[0][:200],
                            limit,
                        )
                        warned = True
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            self._local.active = False


def _retrying(name: str) -> Any:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(method, args, kwargs)

    return call


# Every call that reads or writes the database, including those Optuna's cache layer makes.
for _name in (
    *(n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_") and n != "remove_session"),
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_trial_param",
    "record_heartbeat",
):
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(ResilientStorage, _name, _retrying(_name))


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging for a study file: readers (dashboard, status) never block the
    driver, and a commit costs about a third (no fsync per transaction; a commit survives
    a killed process, only a power cut may lose the last ones). WAL needs a local disk:
    share a study across machines through PostgreSQL, not SQLite on NFS."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener get the pragmas too


def load_existing(url: str, name: str) -> optuna.Study:
    storage = open_storage(url)
    # Study names only: Optuna's study summaries read every trial of every study.
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UserInputError(
            f"no study {name!r} in {masked(url)}; studies there: {names or 'none'} (see --storage)"
        )
    return optuna.load_study(study_name=name, storage=storage)
