"""Where a study lives: the storage URL (``--storage``, the config, ``$VLSWEEP_STORAGE``),
masked for messages, and the storage itself, which rides out a database restart. What
both the sweep's driver and every reader (status, report, dashboard, export) open.
"""

from __future__ import annotations

import abc
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna

from vlsweep.errors import UserInputError

_log = logging.getLogger("vlsweep")
T = TypeVar("T")
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
    url: str, *, kind: type[optuna.storages.RDBStorage] = optuna.storages.RDBStorage, cached: bool = True
) -> ResilientStorage:
    """The study database at ``url`` as Optuna opens it, riding out a database restart
    (``ResilientStorage``); a PostgreSQL password may come from PGPASSWORD. What the sweep's
    driver and every reader (status, report, dashboard, export) open.

    ``kind``: the ``RDBStorage`` (sub)class that talks to the database. ``cached=False``
    leaves Optuna's cache out, for a reader that runs for days beside sweeps that come
    and go (the dashboard): the cache keeps every finished trial it has read, and trusts
    a study id it has seen, which SQLite may hand to a new study once that one is deleted.
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
        rdb = kind(url, engine_kwargs=kwargs)
        if sqlite and parsed.database not in (None, "", ":memory:"):
            _sqlite_wal(rdb)
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
    return ResilientStorage(rdb, cached)  # type: ignore[abstract]  # _each_call_retried defines them all


# -- a storage that rides out a database restart --------------------------------------------

# How long a sweep waits for its database to come back before giving up (a PostgreSQL
# restart or failover takes seconds; a sweep that runs for days should not die of it).
STORAGE_RETRY_ENV = "VLSWEEP_STORAGE_RETRY_SECONDS"
STORAGE_RETRY_SECONDS = 300.0


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not bad data or a broken schema."""
    from sqlalchemy import exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sa.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (sa.OperationalError, sa.InterfaceError))


def _retrying(name: str) -> Any:
    method = getattr(optuna.storages.BaseStorage, name)

    @functools.wraps(method, updated=())  # not its __dict__: abc's mark that it is abstract
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: getattr(self.inner, name)(*args, **kwargs))

    return call


def _each_call_retried(cls: type[ResilientStorage]) -> type[ResilientStorage]:
    """Every method of Optuna's storage API (``BaseStorage``'s public methods: the
    interface Optuna documents for storages of one's own) as a retried call to the cache.
    Taken from ``BaseStorage`` itself, so a method a later Optuna adds is retried too."""
    for name, value in vars(optuna.storages.BaseStorage).items():
        if not name.startswith("_") and callable(value):
            setattr(cls, name, _retrying(name))
    return abc.update_abstractmethods(cls)


@_each_call_retried
class ResilientStorage(optuna.storages.BaseStorage):
    """A study database as Optuna opens it (its ``RDBStorage`` with its cache in front),
    each call retried while the database is unreachable.

    Optuna's RDBStorage raises on the first dropped connection, which would end a
    days-long sweep because PostgreSQL restarted. ``pool_pre_ping`` replaces dead pooled
    connections; this retries the call itself, with backoff, for up to
    ``$VLSWEEP_STORAGE_RETRY_SECONDS`` (300 s). Our own few lines rather than a retry
    library: what matters is which SQLAlchemy errors are transient and the one message
    while waiting. Opening the storage is not retried: a database that is down at start
    is an error the user should see at once. A call whose commit reached the server just
    before the connection died is sent again: an attribute write twice is harmless; a
    tell twice fails (the trial is finished already), and a trial created twice is one
    extra trial. That needs the connection to die between the commit and its answer.

    Why in front of Optuna's cache, through the public storage API only: the cache
    (``_CachedStorage``) is what ``optuna.storages.get_storage`` puts in front of an
    ``RDBStorage`` (and of nothing else), and it calls the RDBStorage's private methods
    (``_get_trials``, ``_create_new_trial``, ``_set_trial_param``, ...). A retry behind
    it would have to be an RDBStorage overriding those, whose names and signatures
    change between Optuna releases. In front of it, a whole call is retried (the cache
    changes its own state only once the database call returned, except when deleting a
    study, which done twice is done once), the cache still serves what it serves for
    Optuna, and a Study passes a storage that is not an RDBStorage through as it is. What
    this gives up: Optuna's trial heartbeats (``heartbeat_interval``), which vlsweep does
    not use (its driver keeps a heartbeat of its own).
    """

    def __init__(self, rdb: optuna.storages.RDBStorage, cached: bool = True):
        self.rdb = rdb  # the database itself, for what only it has (its engine)
        # Optuna's cache, built as Optuna builds it for a URL (optuna.load_study(storage=url));
        # without it, the database itself (a long-lived reader: see open_storage).
        # get_storage is marked internal, but it is what optuna.create_study and load_study
        # themselves call on every storage they are given: it goes only with them.
        self.inner = optuna.storages.get_storage(rdb) if cached else rdb

    def _retry(self, call: Callable[[], T]) -> T:
        limit = float(os.environ.get(STORAGE_RETRY_ENV, STORAGE_RETRY_SECONDS))
        deadline, delay, warned = time.monotonic() + limit, 0.5, False
        while True:
            try:
                result = call()
                if warned:
                    _log.warning("vlsweep: the study database is reachable again")
                return result
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
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
