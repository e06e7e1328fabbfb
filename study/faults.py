"""What a running study does when its database misbehaves.

- **A server (PostgreSQL) restarts or drops connections**: every storage call is retried with
  back-off (0.5 s, doubling to 10 s) for up to `retry_seconds`; the pool pings a connection before
  handing it out, so a restart costs at most one failed call per connection. Past the bound the call
  raises `StorageFault` naming the storage (password masked), and every later call fails at once,
  so the command stops promptly instead of waiting out the bound once per call.
- **SQLite's disk fills** (or the file-size limit is reached): `StorageFault` saying so and where.
  SQLite rolls the failed transaction back, so everything stored before is intact.
- **The SQLite file is replaced or truncated** under the running command: `SqliteWatch` refuses
  to start another transaction, so nothing is written to a file that is not the one opened.
- **A command dies between asking for a trial and its first heartbeat** (killed, or its disk full;
  the first heartbeat is written as soon as the trial is asked for): Optuna would leave that trial
  RUNNING forever; here the first command to look gives it a heartbeat, so it is stale a grace
  period later like one whose heartbeat stopped.
- **Clocks**: staleness is judged on the database's clock only (its `now()` against heartbeats it
  wrote with its own `now()`), never one machine's clock against a time another machine wrote
  (Optuna's `datetime_start` is the asking machine's): machines whose clocks differ do not fail each
  other's live trials. (SQLite has no server: its clock is the clock of the process asking, one
  machine's.)

Heartbeats are best effort: one attempt, and a miss is harmless (the grace period spans several).
A write whose reply was lost may have been applied: the retry of a state change accepts finding
the trial already in the state it asked for.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from study import interrupts
from study.errors import StorageFault
from study.masking import mask_url

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# What PostgreSQL says when it has no connection left: max_connections, or a role's or database's limit.
NO_CONNECTION_LEFT = ("too many clients", "too many connections", "remaining connection slots are reserved")
LOW_SPACE_BYTES = 16 * 2**20  # below this, an I/O error while writing is taken to mean a full disk
# Every storage method that reads or writes the database: the public ones, and the private ones
# Optuna's cache (_CachedStorage) calls on it.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
    "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param", "get_trial_param",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials",
    "get_best_trial", "_get_best_trial_id",
)
# RUNNING trials that have no heartbeat yet (Optuna's schema: trials, trial_heartbeats).
WITHOUT_HEARTBEAT = sqlalchemy.text(
    "SELECT trials.trial_id FROM trials LEFT JOIN trial_heartbeats "
    "ON trial_heartbeats.trial_id = trials.trial_id "
    "WHERE trials.study_id = :study_id AND trials.state = 'RUNNING' AND trial_heartbeats.trial_id IS NULL")


class ResilientStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage with the behaviour under faults described in the module docstring."""

    def __init__(self, url: str, retry_seconds: float, **kwargs):
        self.retry_seconds = retry_seconds
        self.gave_up: str | None = None  # the message of the outage that ended this storage's use
        self.watch: SqliteWatch | None = None  # a SQLite file's (`study.storage.open_storage`)
        super().__init__(url, **kwargs)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    def record_heartbeat(self, trial_id: int) -> None:
        # A missed beat is harmless: the next one, or the retried call of the main thread, will tell.
        if not self.gave_up:
            self.retried(lambda: optuna.storages.RDBStorage.record_heartbeat(self, trial_id), best_effort=True)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials: last heartbeat older than the grace period, both times the
        database's. A RUNNING trial with no heartbeat yet is given one first (see the module
        docstring): Optuna would leave it RUNNING forever, and a grid study would wait for it."""
        def stale() -> list[int]:
            with self.engine.connect() as connection:
                silent = connection.execute(WITHOUT_HEARTBEAT, {"study_id": study_id}).scalars().all()
            for trial_id in silent:  # a command beating at the same moment wins; Optuna ignores the clash
                optuna.storages.RDBStorage.record_heartbeat(self, trial_id)
            return optuna.storages.RDBStorage._get_stale_trial_ids(self, study_id)

        return self.retried(stale)

    def set_trial_user_attr_and_intermediate_values(self, trial_id: int, key: str, value: Any,
                                                    intermediate_values: dict[int, float]) -> None:
        """A trial's user attribute and intermediate values (step -> value) in one transaction, where
        Optuna commits each on its own (a seed's 50 loss points took 26 ms on SQLite, measured). Its
        per-row writes have no public name; its own calls are made of them (5.0)."""
        def write() -> None:
            # Integrity errors raised, not ignored as Optuna's single writes do: the call writes all or nothing.
            with _create_scoped_session(self.scoped_session, False) as session:
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
                for step, intermediate_value in intermediate_values.items():
                    self._set_trial_intermediate_value_without_commit(session, trial_id, step, intermediate_value)

        self.retried(write)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        attempts = 0

        def change() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a lost reply finds its own change applied; anything else is a real error.
                if attempts > 1 and optuna.storages.RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self.retried(change)

    def retried(self, call, best_effort: bool = False):
        """`call()`, retried while the failure is transient and the bound not reached; with
        `best_effort`, tried once, and a transient failure returns None."""
        if self.gave_up:
            raise StorageFault(self.gave_up)
        deadline, delay = None, FIRST_DELAY_SECONDS
        while True:
            try:
                return call()
            except StorageFault:
                raise
            except Exception as e:
                fault = fault_of(e, self)
                if fault is not None:
                    raise fault from e
                if not self.transient(e):
                    raise
                if best_effort:
                    return None
                now = time.monotonic()
                deadline = deadline or now + self.retry_seconds
                if now >= deadline:
                    if refused_for_connections(e):
                        self.gave_up = (f"storage {mask_url(self.url)} refused connections for {self.retry_seconds:g} "
                                        f"s: {connections_advice()}; everything stored is kept: run the same "
                                        "command again then")
                    else:
                        self.gave_up = (f"storage {mask_url(self.url)} did not answer for {self.retry_seconds:g} "
                                        f"s ({database_error(e)}): run the same command again once it is back")
                    raise StorageFault(self.gave_up) from e
                interrupts.check()  # a stop request does not wait out an outage
                time.sleep(min(delay, deadline - now))
                delay = min(2 * delay, MAX_DELAY_SECONDS)

    def transient(self, error: Exception) -> bool:
        """A lost or refused connection to a server: worth retrying. SQLite waits for its locks
        itself (busy timeout), so none of its errors is."""
        cause = _database_cause(error)
        return (not self.is_sqlite and
                isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                                   sqlalchemy.exc.DisconnectionError)))


def _retrying(name: str):
    def call(self, *args, **kwargs):
        return self.retried(lambda: getattr(optuna.storages.RDBStorage, name)(self, *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(optuna.storages.RDBStorage, name).__doc__
    return call


for _name in RETRIED:
    setattr(ResilientStorage, _name, _retrying(_name))


def fault_of(error: BaseException, storage: ResilientStorage | None = None) -> StorageFault | None:
    """The StorageFault a failed write means (a full disk), or None when it is something else."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return StorageFault(write_failed_message(Path(error.filename or "."), "the disk is full", full=True))
    cause = _database_cause(error)
    if isinstance(cause, sqlalchemy.exc.DatabaseError) and storage is not None and storage.watch is not None:
        # A file replaced or truncated in the middle of a transaction ("database disk image is
        # malformed"): the watch, which checks at each transaction's start, says what happened.
        try:
            storage.watch.check()
        except StorageFault as fault:
            return fault
    if isinstance(cause, sqlalchemy.exc.OperationalError) and storage is not None and storage.is_sqlite:
        text = str(cause.orig)
        # SQLite says "database or disk is full" when a write finds no room, but "disk I/O error"
        # when a write starts past the end of the room (or past the file-size limit).
        if "database or disk is full" in text or "disk I/O error" in text:
            return StorageFault(write_failed_message(Path(storage.engine.url.database or "."), text,
                                                     full="full" in text))
    return None


def write_failed_message(path: Path, what: str, full: bool) -> str:
    """One line: what could not be written and why, the room left there, and what to do."""
    directory = path if path.is_dir() else path.parent
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    room = f"{free / 1e6:.0f} MB free there" if free is not None else "free space unknown"
    if limit != resource.RLIM_INFINITY:
        room += f", and a file-size limit (ulimit -f) of {limit} bytes"
    full = full or limit != resource.RLIM_INFINITY or (free is not None and free < LOW_SPACE_BYTES)
    verdict = "the disk is full" if full else "the disk failed"
    return (f"cannot write {path} ({what}): {verdict} ({room}); everything stored before is kept: "
            "free some space and run the same command again")


def refused_for_connections(error: BaseException) -> bool:
    """Whether the server refused a connection because it has none left (PostgreSQL's 'too many clients')."""
    return any(text in database_error(error) for text in NO_CONNECTION_LEFT)


def connections_advice() -> str:
    return ("the server has no connection left (PostgreSQL's max_connections, or a role's or database's "
            "limit; each worker holds about 2, each command 2 more: README, Many machines): run fewer "
            "`workers`, put PgBouncer in front of the server, or raise max_connections")


def database_error(error: BaseException) -> str:
    """The first line of the database's own message, e.g. 'connection ... failed: Connection refused'."""
    cause = _database_cause(error)
    text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def _database_cause(error: BaseException) -> BaseException:
    """Optuna wraps SQLAlchemy's errors in StorageInternalError; the SQLAlchemy error says what happened."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        return error.__cause__
    return error


class SqliteWatch:
    """Stops a command from writing to a SQLite file that is no longer the one it opened.

    `check()` runs at the start of every transaction: the path must still name the same file
    (device and inode), and the file must not have shrunk (SQLite files only grow; Optuna never
    vacuums). Either failure raises StorageFault.

    A replaced file leaves the old file's WAL (its latest commits) beside the path, where SQLite
    would replay it into the replacement on its next open. When that WAL is the one this command
    had open, it is moved aside (with its -shm index) under a name the message gives.
    """

    ORPHAN_SUFFIX = ".of-replaced-file"

    def __init__(self, db: Path):
        self.db = db
        self.wal = db.with_name(db.name + "-wal")
        self.identity: tuple[int, int] | None = None
        self.wal_identity: tuple[int, int] | None = None
        self.size = 0

    def check(self) -> None:
        stat = _stat(self.db)
        if stat is None or (self.identity is not None and _identity(stat) != self.identity):
            raise StorageFault(f"{self.db} was replaced or removed while this command ran: it stopped without "
                               f"writing to it{self._move_old_wal_aside()}; put the study's file back (or use "
                               "another `name`) and run the same command again")
        if stat.st_size < self.size:
            raise StorageFault(f"{self.db} was truncated ({self.size} -> {stat.st_size} bytes) while this "
                               "command ran: it stopped; restore the file from a copy")
        self.identity, self.size = _identity(stat), stat.st_size
        wal = _stat(self.wal)
        self.wal_identity = _identity(wal) if wal is not None else self.wal_identity

    def _move_old_wal_aside(self) -> str:
        wal = _stat(self.wal)
        if wal is None or _identity(wal) != self.wal_identity:
            return ""
        for path in (self.wal, self.db.with_name(self.db.name + "-shm")):
            if path.exists():
                os.replace(path, path.with_name(path.name + self.ORPHAN_SUFFIX))
        return (f"; the old file's WAL (its latest commits) was beside it and is now "
                f"{self.wal.name}{self.ORPHAN_SUFFIX}")


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino
