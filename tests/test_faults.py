"""Faults the database can have while a study runs, and what the user gets.

A real PostgreSQL server (tests/pg_server.py) restarted under two workers and stopped past the
retry bound; a SQLite study whose disk fills (a file-size limit, the same error path); a SQLite
file replaced or truncated under a running worker; two studies in one SQLite file at once. The
retry rules themselves are checked directly on a storage whose calls are made to fail.
"""

import errno
import hashlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from conftest import ROOT, TINY
from pg_server import server_with_role
from study import interrupts
from study.errors import Interrupted, StorageFault
from study.faults import fault_of
from study.records import seed_records
from study.records import point_of
from study.storage import open_storage

PASSWORD = "Numbat-5d1a-Secret"
GRID_12 = ["--leak", "0,0.1,0.2,0.5", "--sub", "0,0.4,0.7"]
FAST_RECOVERY = ["--heartbeat-seconds", "1", "--grace-seconds", "3"]


def start(args, cwd, preexec_fn=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "study", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def one_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def sqlite_rows(db, query):
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            return conn.execute(query).fetchall()
        except sqlite3.OperationalError:  # tables not made yet
            return []


def stored_seed_rows(db):
    return set(sqlite_rows(db, "SELECT trial_id, key, value_json FROM trial_user_attributes WHERE key LIKE 'seed_%'"))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server():
    with server_with_role("alice", PASSWORD) as pg:
        yield pg


def pg_seeds(server, name) -> int:
    try:
        return int(server.sql("SELECT count(*) FROM trial_user_attributes a JOIN trials t USING (trial_id) "
                              f"JOIN studies s USING (study_id) WHERE s.study_name = '{name}' "
                              "AND a.key LIKE 'seed_%'", "initstudy"))
    except subprocess.CalledProcessError:  # tables not made yet
        return 0


# --- PostgreSQL ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_postgresql_restarts_under_two_workers(server, tmp_path):
    url = server.url("initstudy", "alice", PASSWORD)
    proc = start(["search", "--name", "restart", "--storage", url, *TINY, *GRID_12, "--seeds", "0,1",
                  "--workers", "2"], tmp_path)
    wait_for(lambda: pg_seeds(server, "restart") >= 2, 180, "the first seeds")
    server.restart()
    assert proc.poll() is None, "the study ended before the restart: the test proves nothing"
    restarted_at = pg_seeds(server, "restart")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert restarted_at < 24, "every seed was stored before the restart"

    study = optuna.load_study(study_name="restart", storage=url)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] == 12 and states[TrialState.FAIL] == 0, states
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len({point_of(t) for t in complete}) == 12
    records = [seed_records(t) for t in complete]
    assert all(sorted(r) == [0, 1] for r in records)
    assert not any("reused_from" in record for r in records for record in r.values())  # each trained once
    assert PASSWORD not in out + err


@pytest.mark.slow
def test_postgresql_down_past_the_bound_stops_in_one_line_and_the_same_command_resumes(server, tmp_path):
    url = server.url("initstudy", "alice", PASSWORD)
    args = ["search", "--name", "down", "--storage", url, *TINY, "--leak", "0,0.1", "--sub", "0.4",
            "--seeds", "0,1,2,3,4,5", *FAST_RECOVERY, "--storage-retry-seconds", "4"]
    proc = start(args, tmp_path)
    wait_for(lambda: pg_seeds(server, "down") >= 1, 180, "the first seed")
    server.stop()
    try:
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        assert time.monotonic() - stopped < 60
        one_line(err, "storage postgresql+psycopg2://alice:***@127.0.0.1", "did not answer for 4 s",
                 "run the same command again")
        assert PASSWORD not in out + err
    finally:
        server.start()

    again = start(args, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    study = optuna.load_study(study_name="down", storage=url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and all(sorted(seed_records(t)) == list(range(6)) for t in complete)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))  # the stopped command's trial, failed as stale
    final = {point_of(t): seed_records(t) for t in complete}[point_of(failed)]
    for seed, record in seed_records(failed).items():
        assert final[seed]["reused_from"] == failed.number and final[seed]["val_acc"] == record["val_acc"]


# --- SQLite --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_keeps_every_seed_and_the_same_command_finishes(tmp_path):
    db = tmp_path / "studies" / "full.db"
    args = ["search", "--name", "full", *TINY, *GRID_12, "--seeds", "0,1", *FAST_RECOVERY]

    def small_disk():  # a file-size limit fails writes the way a full disk does (EFBIG / ENOSPC)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    proc = start(args, tmp_path, preexec_fn=small_disk)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err
    one_line(err, "the disk is full", str(db.relative_to(tmp_path)), "run the same command again")
    assert sqlite_rows(db, "PRAGMA integrity_check") == [("ok",)]
    before = stored_seed_rows(db)
    assert before, "nothing was stored before the disk filled: the limit is too small to test anything"
    assert len(before) < 24

    again = start(args, tmp_path)  # space freed: no limit
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert sqlite_rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert before <= stored_seed_rows(db)  # every seed stored before the fault is still there
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{db}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12 and len({point_of(t) for t in complete}) == 12
    assert all(sorted(seed_records(t)) == [0, 1] for t in complete)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["replaced", "truncated"])
def test_a_database_file_changed_under_a_running_worker_stops_it(tmp_path, fault):
    db = tmp_path / "studies" / "moved.db"
    proc = start(["search", "--name", "moved", *TINY, "--leak", "0,0.1", "--sub", "0.4",
                  "--seeds", "0,1,2,3,4,5,6,7"], tmp_path)
    wait_for(lambda: len(stored_seed_rows(db)) >= 1, 180, "the first seed")
    if fault == "replaced":  # a restore from an older copy, written beside it and moved over it
        replacement = tmp_path / "restored.db"
        with sqlite3.connect(replacement) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
            conn.execute("INSERT INTO notes VALUES ('the replacement')")
        conn.close()
        expected = digest(replacement)
        os.replace(replacement, db)
    else:
        os.truncate(db, 0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    one_line(err, str(db.relative_to(tmp_path)), f"was {fault}")
    if fault == "replaced":
        assert digest(db) == expected  # nothing was written to the file now at the path
        # The old file's WAL is moved aside, so opening the replacement does not replay it there.
        assert not db.with_name(db.name + "-wal").exists() and "moved.db-wal.of-replaced-file" in err
        assert db.with_name("moved.db-wal.of-replaced-file").exists()
        assert sqlite_rows(db, "SELECT text FROM notes") == [("the replacement",)]
        assert digest(db) == expected


@pytest.mark.slow
def test_two_studies_in_one_sqlite_file_at_once(tmp_path):
    storage = ["--storage", "sqlite:///studies/shared.db"]
    procs = {name: start(["search", "--name", name, *storage, *TINY, "--leak", leak, "--sub", "0,0.4",
                          "--seeds", "0"], tmp_path)
             for name, leak in (("first", "0,0.1,0.2"), ("second", "0.3,0.5"))}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err)
    for name, leaks in (("first", {0, 0.1, 0.2}), ("second", {0.3, 0.5})):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/studies/shared.db")
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        assert {t.params["leak"] for t in study.trials} == leaks and len(study.trials) == 2 * len(leaks)


# --- the retry rules, on a storage made to fail --------------------------------------------------

@pytest.fixture
def flaky(tmp_path, monkeypatch):
    """A storage whose `get_all_studies` fails with a lost connection `fails[0]` times, as a server's would."""
    storage = open_storage(f"sqlite:///{tmp_path}/flaky.db", retry_seconds=2)
    storage.is_sqlite = False  # retried as a server storage is
    fails = [0]
    real = optuna.storages.RDBStorage.get_all_studies

    def get_all_studies(self):
        if fails[0]:
            fails[0] -= 1
            error = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            raise optuna.exceptions.StorageInternalError("commit failed") from error
        return real(self)

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_studies", get_all_studies)
    return storage, fails


def test_a_short_outage_is_ridden_out(flaky):
    storage, fails = flaky
    fails[0] = 2
    assert storage.get_all_studies() == [] and fails[0] == 0


def test_an_outage_past_the_bound_is_a_fault_and_later_calls_fail_at_once(flaky):
    storage, fails = flaky
    fails[0] = 10 ** 6
    began = time.monotonic()
    with pytest.raises(StorageFault, match="did not answer for 2 s .*server closed the connection"):
        storage.get_all_studies()
    assert 2 <= time.monotonic() - began < 10
    fails[0] = 0
    began = time.monotonic()
    with pytest.raises(StorageFault):
        storage.get_all_studies()
    assert time.monotonic() - began < 0.5


def test_a_stop_request_does_not_wait_out_an_outage(flaky):
    storage, fails = flaky
    fails[0] = 10 ** 6
    with pytest.raises(Interrupted):
        with interrupts.stop_requests():
            os.kill(os.getpid(), signal.SIGTERM)
            storage.get_all_studies()
    assert fails[0] == 10 ** 6 - 1  # tried once, then stopped instead of waiting to try again


def test_errors_that_are_not_a_lost_connection_are_not_retried(flaky):
    storage, _ = flaky
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("no such study")


def test_a_retried_state_change_that_had_been_applied_is_accepted(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path}/lost.db", retry_seconds=5)
    storage.is_sqlite = False
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    lost = [True]

    def reply_lost(self, trial_id, state, values=None):
        applied = real(self, trial_id, state, values)
        if lost.pop() if lost else False:
            error = sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("connection reset"))
            raise optuna.exceptions.StorageInternalError("commit failed") from error
        return applied

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", reply_lost)
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [1.0])
    assert storage.get_trial(trial._trial_id).state == TrialState.COMPLETE
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a real second change is still refused
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def test_a_running_trial_that_never_beat_is_failed_after_the_grace_period(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/silent.db", heartbeat_seconds=1, grace_seconds=2)
    study = optuna.create_study(storage=storage)
    trial = study.ask()  # and its command dies before the first heartbeat
    optuna.storages.fail_stale_trials(study)  # gives it one, on the database's clock
    assert study.trials[0].state == TrialState.RUNNING  # within the grace period: left alone
    time.sleep(3.5)  # SQLite's clock counts whole seconds: more than 2 s by it
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == TrialState.FAIL


def test_a_picture_that_finds_the_disk_full_is_the_same_fault():
    error = OSError(errno.ENOSPC, "No space left on device", "studies/q/artifacts/abc.png")
    message = str(fault_of(error))
    assert "cannot write studies/q/artifacts/abc.png" in message and "the disk is full" in message
    assert fault_of(OSError(errno.ENOENT, "No such file", "x")) is None


def test_a_user_attribute_and_intermediate_values_are_stored_in_one_transaction_or_not_at_all(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/one.db", retry_seconds=2)
    trial = optuna.create_study(storage=storage).ask()
    commits = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda connection: commits.append(1))
    points = {0: 2.3, 7: 1.9, 14: float("nan"), 21: float("inf")}
    storage.set_trial_user_attr_and_intermediate_values(trial._trial_id, "seed_0", {"val_acc": 0.8}, points)
    assert len(commits) == 1
    stored = storage.get_trial(trial._trial_id)
    assert stored.user_attrs["seed_0"] == {"val_acc": 0.8}
    assert stored.intermediate_values.keys() == points.keys() and stored.intermediate_values[7] == 1.9
    assert stored.intermediate_values[21] == float("inf")
    with pytest.raises(TypeError):  # the last value cannot be stored: nothing of the call is
        storage.set_trial_user_attr_and_intermediate_values(trial._trial_id, "seed_1", {"val_acc": 0.7},
                                                            {28: 1.5, 35: "not a loss"})
    stored = storage.get_trial(trial._trial_id)
    assert "seed_1" not in stored.user_attrs and 28 not in stored.intermediate_values
