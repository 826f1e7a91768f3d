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

And three for long runs on a shared server (PostgreSQL, MySQL), where a worker may train for an
hour between two writes, or the server restarts under it:

* **Connections that survive:** ``pool_pre_ping`` (a pooled connection is tested before use
  and replaced when the server dropped it), ``pool_recycle`` (none is older than 30 min, below
  common firewall idle limits), a connect timeout and TCP keepalives (libpq drivers).
* **Heartbeats that survive an outage:** a heartbeat that cannot be written is skipped, not a
  crash of the heartbeat thread; the next one, after the server is back, reconnects. A
  trial whose outage outlasts the grace period is failed as stale and queued again, and so is
  one whose worker died before its first heartbeat (Optuna alone would wait for it forever).
* **Passwords never printed:** every message here shows URLs through :func:`redact`, and the
  password of every URL parsed in this process is registered so that :func:`scrub` can remove
  it from any text (the CLI scrubs every message it prints, worker errors included).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from sqlalchemy.engine import URL, make_url

from l2bn.errors import StorageError

DEFAULT_STORAGE = "sqlite:///l2bn.db"
SQLITE_BUSY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10
POOL_RECYCLE_S = 1800
RECONNECT_S = 120.0  # how long a worker waits for a lost database server before giving up
LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")
_SECRETS: set[str] = set()
_log = logging.getLogger(__name__)

StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def redact(url: str | URL) -> str:
    """The URL with its password replaced by ``***``: safe to print and to log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<not a database URL>"


def _register_secret(url: URL) -> None:
    password = url.password
    if password:
        text = str(password)
        _SECRETS.update({text, urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text)})


def scrub(text: str) -> str:
    """``text`` with the password of every storage URL this process has parsed replaced."""
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: quoted forms
        text = text.replace(secret, "***")
    return text


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
        _register_secret(parsed)
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
    database = url.database
    if str(url.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        # sqlite:///file:PATH?mode=ro&uri=true: SQLite's URI form (read-only, shared cache, …)
        database = database.removeprefix("file:")
        if database.startswith("//"):
            database = urllib.parse.urlsplit("file:" + database).path
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            return None
    return Path(database)


def _engine_kwargs(url: URL) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        # pool_pre_ping: a worker that trained for an hour finds its pooled connection dropped
        # by a firewall or server restart; ping it rather than fail the trial's final write.
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE_S}
        if url.get_driver_name() in LIBPQ_DRIVERS:
            # libpq parameters; settings in the URL's query string win over these.
            kwargs["connect_args"] = {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "keepalives": 1,
                "keepalives_idle": 60,
                "keepalives_interval": 10,
                "keepalives_count": 6,
                "application_name": "l2bn",
            }
            for key in list(kwargs["connect_args"]):
                if key in url.query:
                    del kwargs["connect_args"][key]
        return kwargs
    if backend == "mysql":
        return {
            "pool_pre_ping": True,
            "pool_recycle": POOL_RECYCLE_S,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
    return {}


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a lost or refused connection to a database
    server: worth waiting for the server, unlike a full disk or a read-only SQLite file."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sqlalchemy.exc.DisconnectionError):
            return True
        if isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return not isinstance(e.orig, sqlite3.Error)  # SQLite is a file, not a server
        # An error raised "from None" on purpose (an L2bnError) ends the chain.
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


def database_error(error: BaseException) -> str | None:
    """What the database said, when ``error`` (or what caused it) came from the database:
    "database or disk is full", "attempt to write a readonly database", …; else None."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.SQLAlchemyError | sqlite3.Error):
            return describe(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def describe(error: BaseException) -> str:
    """One line saying what the database said (not Optuna's generic wrapper text)."""
    return scrub(_first_line(error))


def wait_for_storage(storage: optuna.storages.RDBStorage, timeout_s: float = RECONNECT_S) -> None:
    """Return once the database answers again; :class:`StorageError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            with storage.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            return
        except sqlalchemy.exc.SQLAlchemyError as e:
            if not is_connection_error(e) or time.monotonic() + delay > deadline:
                raise StorageError(
                    f"lost storage {redact(storage.url)} for {timeout_s:.0f} s: {describe(e)}"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeats survive a short database outage, and where a
    claimed trial whose worker died before its first heartbeat still goes stale.

    Optuna writes heartbeats from a thread that dies on the first error (printing a traceback),
    leaving a trial that trains on but looks dead. Here a failed heartbeat is skipped: after a
    lost connection the next one reconnects; any other database error (a full disk) reaches
    the worker's own next write, which reports it.

    Optuna never fails a RUNNING trial that has no heartbeat at all, and a worker killed
    between claiming a trial and its first heartbeat leaves exactly that: a point claimed
    forever, which every other worker would wait for. So the stale check first gives each such
    trial a heartbeat: it goes stale after the grace period unless its worker is alive and
    beats (which then only updates that heartbeat).
    """

    def record_heartbeat(self, trial_id: int) -> None:
        for _ in range(2):  # again once after a first beat raced with _watch_silent_trials
            try:
                super().record_heartbeat(trial_id)
                return
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
                if not isinstance(e.__cause__ or e, sqlalchemy.exc.IntegrityError):
                    _log.warning(
                        "l2bn: heartbeat not recorded (trial id %d): %s", trial_id, describe(e)
                    )
                    return

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        self._watch_silent_trials(study_id)
        return list(super()._get_stale_trial_ids(study_id))

    def _watch_silent_trials(self, study_id: int) -> None:
        trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
        silent = (
            sqlalchemy.select(trials.c.trial_id)
            .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
            .where(trials.c.study_id == study_id)
            .where(trials.c.state == optuna.trial.TrialState.RUNNING)
            .where(beats.c.trial_id.is_(None))
        )
        with self.engine.connect() as conn:
            found = [row[0] for row in conn.execute(silent)]
        for trial_id in found:
            self.record_heartbeat(trial_id)


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
    read_only: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_callback: StaleCallback | None = None,
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (creating its tables), or :class:`StorageError`.

    With ``heartbeat_interval`` set, running trials record a heartbeat and a trial silent for
    ``grace_period`` seconds is failed by the next worker that looks, which calls
    ``stale_callback`` on it. ``read_only``: for commands that only read (``l2bn status``): a
    missing SQLite file is an error (SQLite would silently create it), and transactions are
    plain readers (a read-only file refuses ``BEGIN IMMEDIATE``).
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None and not path.parent.is_dir():
        raise StorageError(f"storage {redact(parsed)}: folder {path.parent} does not exist")
    if path is not None and read_only and not path.is_file():
        raise StorageError(f"storage {redact(parsed)}: no file {path}; run `l2bn sweep` first")
    try:
        with warnings.catch_warnings():
            # heartbeat_interval is "experimental" in Optuna since 2.9; it is what we want.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _RDBStorage(
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
    if parsed.get_backend_name() == "sqlite" and not read_only:
        _begin_immediate_on_sqlite(storage.engine)
    return storage


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    orig = getattr(cause, "orig", None)  # the driver's own exception inside SQLAlchemy's
    text = scrub(str(orig if orig is not None else cause).strip())
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
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(
                f"storage {redact(url)}: cannot create the lock file {lock_file}: {e.strerror}"
            ) from None
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
