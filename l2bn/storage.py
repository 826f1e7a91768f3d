"""Opening Optuna storages for sweeps: SQLite for one machine, PostgreSQL (or MySQL) for many.

Three things here are not Optuna's defaults, and each one is there for exactly-once:

* **SQLite transactions start with ``BEGIN IMMEDIATE``.** Python's sqlite3 driver opens a
  transaction only at the first write, so Optuna's "claim a WAITING trial" (read the state,
  then write RUNNING) reads outside any transaction: two workers can both read WAITING and both
  write RUNNING, running the same trial twice. With ``BEGIN IMMEDIATE`` the read and the write
  are one serialized transaction, and the ``state != WAITING`` check inside Optuna's
  ``set_trial_state_values`` becomes a real compare-and-set. It also removes the deferred-lock
  deadlock that surfaces as "database is locked" whatever the busy timeout.
* **A busy timeout** (``connect_args={"timeout": …}``): a writer waits for the lock instead of
  failing. Transactions are short, so a minute is far more than ever needed.
* **A cross-process lock for enqueueing** (:func:`enqueue_lock`): Optuna's
  ``enqueue_trial(skip_if_exists=True)`` checks, then inserts, in two transactions, so two
  processes starting at once can both enqueue a point. l2bn creates every WAITING trial under
  this lock (a file lock next to a SQLite file, ``pg_advisory_lock`` on PostgreSQL,
  ``GET_LOCK`` on MySQL) after checking that the point has no live trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from l2bn.errors import StorageError

DEFAULT_STORAGE = "sqlite:///l2bn.db"
SQLITE_BUSY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10

StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def redact(url: str | URL) -> str:
    """The URL with its password replaced by ``***``: safe to print and to log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<not a database URL>"


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        # The message quotes nothing of the input: it might hold a password.
        raise StorageError(
            "--storage is not a database URL; expected e.g. sqlite:///l2bn.db or "
            "postgresql+psycopg://user:password@host/database"
        ) from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(
            f"storage {redact(parsed)}: unknown database kind {parsed.drivername!r}"
        ) from None
    except ImportError as e:
        raise StorageError(
            f"storage {redact(parsed)}: the database driver is not installed ({e.name}); "
            "for PostgreSQL: pip install 'l2bn[postgres]'"
        ) from None
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _engine_kwargs(url: URL) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        # pool_pre_ping: a worker that trained for an hour finds its pooled connection dropped
        # by a firewall or server restart; ping it rather than fail the trial's final write.
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    if backend == "mysql":
        return {"pool_pre_ping": True, "pool_recycle": 3600}
    return {}


def _begin_immediate_on_sqlite(engine: sqlalchemy.Engine) -> None:
    """SQLAlchemy's documented recipe for serializable SQLite transactions (pysqlite)."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections Optuna opened while creating its tables predate the hooks: drop them.
    engine.dispose()


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_callback: StaleCallback | None = None,
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (creating its tables), or :class:`StorageError`.

    With ``heartbeat_interval`` set, running trials record a heartbeat and a trial silent for
    ``grace_period`` seconds is failed by the next worker that looks, which calls
    ``stale_callback`` on it.
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None and not path.parent.is_dir():
        raise StorageError(f"storage {redact(parsed)}: folder {path.parent} does not exist")
    try:
        with warnings.catch_warnings():
            # heartbeat_interval is "experimental" in Optuna since 2.9; it is what we want.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=_engine_kwargs(parsed),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_callback,
            )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise StorageError(f"cannot open storage {redact(parsed)}: {_first_line(e)}") from None
    except RuntimeError as e:  # Optuna: schema written by a newer/older Optuna
        raise StorageError(f"storage {redact(parsed)}: {_first_line(e)}") from None
    if parsed.get_backend_name() == "sqlite":
        _begin_immediate_on_sqlite(storage.engine)
    return storage


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    orig = getattr(cause, "orig", None)  # the driver's own exception inside SQLAlchemy's
    text = str(orig if orig is not None else cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def _lock_key(name: str) -> int:
    # A stable signed 64-bit key (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def enqueue_lock(storage: optuna.storages.RDBStorage, name: str) -> Iterator[None]:
    """Hold a lock named ``name`` across processes (and nodes) that share ``storage``.

    Held only while checking which grid points lack a trial and enqueueing them: a few
    storage calls, never a training run.
    """
    url = make_url(storage.url)
    backend = url.get_backend_name()
    path = sqlite_path(url)
    if path is not None:
        import fcntl  # POSIX only, as is sharing one SQLite file between processes safely

        lock_file = path.with_name(path.name + ".lock")
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    elif backend == "postgresql":
        # A session-level advisory lock on a connection of its own: Optuna's writes run on
        # other pooled connections while it is held.
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
            try:
                yield
            finally:
                conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(name)}
                )
                conn.commit()
    elif backend == "mysql":
        key = "l2bn:" + hashlib.sha256(name.encode()).hexdigest()[:40]
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": key})
                conn.commit()
    else:
        # In-memory SQLite (one process) or a database we know no lock for.
        yield
