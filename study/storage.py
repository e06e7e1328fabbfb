"""Opening an Optuna RDB storage so that many workers share it and nothing stored is damaged.

SQLite: before anything writes, the file is checked read-only (`PRAGMA quick_check`) and its
directory for writability, so a bad path fails with one line and leaves the file as it was. Once
the study is known to be good, `prepare_for_workers` switches the database to WAL journal mode
(readers such as the dashboard never block writers) and every transaction starts with
`BEGIN IMMEDIATE` under a long busy timeout: a writer waits for the lock instead of failing with
"database is locked" when it would otherwise upgrade a read transaction mid-way.

`open_study` creates a study or opens it only under the design it was made with (compared whole);
`load_existing_study` opens one for reading.

Any other URL (PostgreSQL for many machines) is passed to Optuna with a connection pool that pings
a connection before use and a 10 s connection timeout. `study.faults` says what a study does when
the database misbehaves while it runs. No message shows a URL's password (`study.masking`).
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

# Optuna imports these on opening its first storage; imported with this module instead, they are in
# the fork server for every worker (`study.workers`), which then opens its storage 0.2 s sooner.
import alembic.command  # noqa: F401
import alembic.config  # noqa: F401
import alembic.migration  # noqa: F401
import alembic.script  # noqa: F401
import optuna
import sqlalchemy
from optuna.storages._rdb import models as optuna_models  # the schema's table names
from sqlalchemy import event

from study.config import RunConfig
from study.design import STORAGE_RETRY_SECONDS, StudyDesign, study_config, upgrade_stored_config
from study.errors import BadInput
from study.faults import ResilientStorage, SqliteWatch, connections_advice, refused_for_connections
from study.masking import mask_url, remember
from study.place import StudyPlace, sqlite_path
from study.records import raw_config, stored_config, stored_target, write_config

# Optuna creates its tables one by one: a command started beside another on a new database may find
# some of them and not yet `version_info`. Only a table Optuna would not make marks a foreign file.
OPTUNA_TABLES = frozenset(optuna_models.BaseModel.metadata.tables) | {"alembic_version"}

BUSY_TIMEOUT_SECONDS = 300  # a writer waits this long for the lock; heartbeats and tells are milliseconds
SCHEMA_RACE_RETRIES = 5
SETTLE_READS, SETTLE_SECONDS = 5, 0.3  # a database that keeps changing while checked is read again
NOT_COMPARED = ("code_version",)  # recorded in the study, but a new release may continue a study
WAL_SWITCH_RETRIES = 20
CONNECT_TIMEOUT_SECONDS = 10  # an unreachable host fails in seconds, not after TCP's minutes


def open_storage(url: str, heartbeat_seconds: int | None = None, grace_seconds: int | None = None,
                 retry_seconds: float = STORAGE_RETRY_SECONDS) -> ResilientStorage:
    """The storage at `url`, checked first where it is a SQLite file. Raises BadInput.

    Opening is not retried: a server that does not answer now is more likely a wrong URL than a
    restart, and the user should hear so at once. Calls after opening are (`study.faults`).
    """
    remember(url)
    db = sqlite_path(url)
    if db is not None:
        check_sqlite_file(db)
        engine_kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_SECONDS}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith(("postgresql:", "postgresql+psycopg2:", "postgres:")):
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            storage = ResilientStorage(url, retry_seconds, engine_kwargs=engine_kwargs,
                                       heartbeat_interval=heartbeat_seconds, grace_period=grace_seconds)
            break
        except sqlalchemy.exc.DBAPIError as e:
            # Commands started together on a new database race to create Optuna's tables (SQLite
            # says "table ... already exists", a server a duplicate key); the losers find them
            # made on the next attempt.
            if refused_for_connections(e):
                raise BadInput(f"cannot open storage {mask_url(url)}: {connections_advice()}") from e
            if not _lost_schema_race(e) or attempt == SCHEMA_RACE_RETRIES:
                raise BadInput(f"cannot open storage {mask_url(url)}: {first_line(e)}") from e
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # sqlalchemy's errors for bad URLs, missing drivers, unreachable servers
            raise BadInput(f"cannot open storage {mask_url(url)}: {first_line(e)}") from e
    if db is not None:
        storage.watch = SqliteWatch(db)
        _sqlite_transactions(storage, storage.watch)
        # Closed connections checkpoint their WAL into the file they opened and remove it from beside
        # the path; left to the interpreter's exit, they may not be, and a -wal file left beside a
        # database that was replaced meanwhile would be replayed into the replacement.
        atexit.register(storage.engine.dispose)
    return storage


def prepare_for_workers(url: str) -> None:
    """WAL journal mode for a SQLite database (persistent in the file); nothing for other storages."""
    db = sqlite_path(url)
    if db is None:
        return
    for attempt in range(WAL_SWITCH_RETRIES + 1):
        try:
            with closing(sqlite3.connect(db, timeout=BUSY_TIMEOUT_SECONDS)) as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            # Switching needs the file to itself, and SQLite answers "locked" at once, without its
            # busy wait, while a command started beside this one switches it or writes.
            if "locked" not in str(e) or attempt == WAL_SWITCH_RETRIES:
                raise
            time.sleep(0.5)


def check_sqlite_file(db: Path) -> None:
    """Refuse, before Optuna writes anything, a path that cannot hold a healthy SQLite database."""
    if db.is_dir():
        raise BadInput(f"{db} is a directory, not a SQLite file: pass `storage` sqlite:///path/to/file.db")
    directory = db.parent if str(db.parent) else Path(".")
    if directory.is_dir() and not os.access(directory, os.W_OK):
        raise BadInput(f"{directory} is not writable (SQLite writes its journal there): "
                       "make it writable or choose another `storage`")
    if db.exists():
        if not os.access(db, os.R_OK | os.W_OK):
            raise BadInput(f"{db} is not readable and writable by this user")
        # The read takes no lock, so a command writing beside this one may show it a half-written
        # page; a file that changed while it was read is read again before it is called damaged.
        for _ in range(SETTLE_READS):
            before = _stamp(db)
            try:
                _check_sqlite_contents(db)
                return
            except BadInput:
                time.sleep(SETTLE_SECONDS)
                if _stamp(db) == before:
                    raise
        _check_sqlite_contents(db)


def _check_sqlite_contents(db: Path) -> None:
    try:
        with closing(sqlite3.connect(_read_only_uri(db), uri=True)) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise BadInput(f"{db} is not a readable SQLite database ({e}): move it away or use another `name`") from e
    if result is None or result[0] != "ok":
        raise BadInput(f"{db} is damaged (SQLite quick_check: {result[0] if result else 'no answer'}): "
                       "restore it from a copy, or move it away and use another `name`")
    if foreign := sorted(tables - OPTUNA_TABLES):
        raise BadInput(f"{db} is a SQLite database of something else (tables: {', '.join(foreign[:3])}): "
                       "it is left alone; choose another `storage`")


def _stamp(db: Path) -> tuple:
    """What changes when anyone writes the database or its journals."""
    stamps = []
    for path in (db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal")):
        try:
            stat = path.stat()
            stamps.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def _read_only_uri(db: Path) -> str:
    """A URI that opens `db` without writing a byte. With no -wal file beside it nobody has it open
    in WAL mode, and `immutable` keeps SQLite from creating -wal and -shm files; with one, those
    files exist already and a plain read-only connection adds nothing."""
    wal = db.with_name(db.name + "-wal")
    return f"file:{db}?mode=ro" + ("" if wal.exists() else "&immutable=1")


def _lost_schema_race(error: sqlalchemy.exc.DBAPIError) -> bool:
    return isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _sqlite_transactions(storage: optuna.storages.RDBStorage, watch: SqliteWatch) -> None:
    """Make every SQLite transaction take the write lock at its start (see the module docstring),
    after `watch` has checked that the file is still the one opened."""
    engine = storage.engine
    watch.check()

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # pysqlite would otherwise BEGIN (deferred) itself

    @event.listens_for(engine, "begin")
    def _begin(connection):
        watch.check()
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna checked the schema lack the hooks


def config_differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Human-readable differences, e.g. ["space.leak: stored 0,0.1, asked 0,0.2"]."""
    differences = []
    for key in sorted(set(stored) | set(wanted)):
        if key in NOT_COMPARED:
            continue
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: stored {old}, asked {new}")
    return differences


def open_study(place: StudyPlace, design: StudyDesign, run: RunConfig, storage: optuna.storages.RDBStorage,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Load the study named `place.name` (refusing a different configuration) or create it, with
    `sampler` (`study.schedule.make_sampler`).

    Several commands may start on one new study at once: the one that loses the race to create it
    loads it, and waits briefly for the winner to store the configuration.
    """
    wanted = study_config(design, run)
    directions = ["maximize", "minimize"] if design.objective == "stability" else ["maximize"]
    if place.name not in optuna.get_all_study_names(storage):
        try:
            study = optuna.create_study(study_name=place.name, storage=storage, directions=directions,
                                        sampler=sampler)
            return _store_design(study, wanted)
        except optuna.exceptions.DuplicatedStudyError:
            pass
    study = optuna.load_study(study_name=place.name, storage=storage, sampler=sampler)
    stored = raw_config(study)
    for _ in range(20):
        if stored is not None or study.trials:
            break
        time.sleep(0.5)  # a racing command created the study and is about to store its configuration
        stored = raw_config(study)
    if stored is None and study.trials:
        raise BadInput(f"study {place.name!r} in {mask_url(place.storage_url())} was not made by initstudy "
                       "(it has trials but no initstudy design): use another `name`")
    if stored is None:
        return _adopt(study, place, wanted, directions)
    differences = config_differences(upgrade_stored_config(stored), wanted)
    if differences:
        raise BadInput(f"study {place.name!r} was run with another configuration ({'; '.join(differences)}): "
                       f"continue it with its stored design by `python -m study work --name {place.name}` "
                       "(with its --storage), or use another `name`")
    return study


def _adopt(study: optuna.Study, place: StudyPlace, wanted: dict, directions: list[str]) -> optuna.Study:
    """A study with no design and no trial: a command stopped between Optuna's creating it and
    storing its design. This command finishes the creation with its own design."""
    made = [direction.name.lower() for direction in study.directions]
    if made != directions:
        raise BadInput(f"study {place.name!r} in {mask_url(place.storage_url())} is empty but was made to "
                       f"{' and '.join(made)}, not {' and '.join(directions)}: use the other `objective`, "
                       "or another `name`")
    return _store_design(study, wanted)


def _store_design(study: optuna.Study, wanted: dict) -> optuna.Study:
    """The last steps of creating a study: its metric names (the dashboard shows them), then its design."""
    study.set_metric_names(["mean_val_acc", "acc_std"][:len(study.directions)])
    write_config(study, wanted)
    return study


def load_existing_study(place: StudyPlace, retry_seconds: float = STORAGE_RETRY_SECONDS) -> optuna.Study:
    """A stored study, for reading; BadInput naming the studies there when it is absent."""
    return _load_existing(place, _existing_storage(place, retry_seconds))


def read_design(place: StudyPlace, retry_seconds: float = STORAGE_RETRY_SECONDS) -> tuple[dict, int | None]:
    """A stored study's configuration (today's layout; {} where initstudy stored none) and its target
    of trials, with the connections closed after reading: a joining machine keeps none for it."""
    storage = _existing_storage(place, retry_seconds)
    try:
        study = _load_existing(place, storage)
        return stored_config(study), stored_target(study)
    finally:
        storage.engine.dispose()


def _existing_storage(place: StudyPlace, retry_seconds: float) -> ResilientStorage:
    db = sqlite_path(place.storage_url())
    if db is not None and not db.is_file():
        raise BadInput(f"no study database at {db}: create the study (`python -m study create` or a search) first")
    return open_storage(place.storage_url(), retry_seconds=retry_seconds)


def _load_existing(place: StudyPlace, storage: ResilientStorage) -> optuna.Study:
    names = optuna.get_all_study_names(storage)
    if place.name not in names:
        raise BadInput(f"no study {place.name!r} in {mask_url(place.storage_url())} "
                       f"(it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=place.name, storage=storage)
