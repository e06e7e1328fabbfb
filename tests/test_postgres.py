"""A study shared through a real PostgreSQL server: three workers, exact trial count, no duplicates;
two "machines" (process trees with their own directories) on one created study, one killed; clocks
an hour off (libfaketime); a server with no connection left.

The server is the tests' own (tests/pg_server.py), started for this module and stopped at the end.
"""

import glob
import time
from collections import Counter
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

import study as api
from conftest import TINY, assert_one_line_error, run_cli
from pausing import PausedCommand
from pg_server import PostgresServer, server_with_role
from study.data import DEBIAN_DIR, IDX_FILES
from study.records import seed_records
from study.storage import open_storage


@pytest.fixture(scope="module")
def postgres_server():
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def postgres_url(postgres_server):
    postgres_server.create_database("initstudy")
    return postgres_server.url("initstudy")


@pytest.mark.slow
def test_three_workers_share_a_postgresql_study(postgres_url, tmp_path):
    grid = ["--leak", "0,0.1,0.2", "--sub", "0,0.4,0.7", "--seeds", "0"]
    proc = run_cli("search", "--name", "pg", "--storage", postgres_url, *TINY, *grid, "--workers", "3",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    settings = [(t.params["leak"], t.params["sub"]) for t in complete]
    assert len(complete) == 9 and len(set(settings)) == 9
    # Running the same command again adds nothing.
    again = run_cli("search", "--name", "pg", "--storage", postgres_url, *TINY, *grid, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="pg", storage=postgres_url).trials) == len(study.trials)


# ---- Many machines: two machines on one study, clocks, connections ----------------------------------

MACHINE_FLAGS = ["--heartbeat-seconds", "1", "--grace-seconds", "3"]
TRAINED_SEEDS = "study.runner:write_seed"  # a seed's record stored: one call per seed trained or reused
FIRST_HEARTBEAT = "study.schedule:Heartbeats.beat"  # the first beat, written as soon as a trial is asked for


def machine_dir(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A machine's working directory and its data directory: the same IDX files at its own path."""
    home, data = tmp_path / name, tmp_path / name / "fashion"
    data.mkdir(parents=True)
    for file in IDX_FILES:
        (data / f"{file}.gz").symlink_to(DEBIAN_DIR / f"{file}.gz")
    return home, data


def fresh_seeds(trials) -> Counter:
    """(setting, seed) -> how many times it was trained (a reused record names the trial that trained it)."""
    return Counter(((t.params["leak"], t.params["sub"]), seed) for t in trials
                   for seed, record in seed_records(t).items() if "reused_from" not in record)


OBSERVER = "test-observer"  # the application name of this test's own connections, not counted


def connection_count(server: PostgresServer, database: str) -> int:
    return int(server.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' "
                          f"AND application_name <> '{OBSERVER}'"))


@pytest.mark.slow
def test_two_machines_share_one_study_and_a_killed_machine_loses_nothing(postgres_server, tmp_path):
    url = postgres_server.url("machines")
    postgres_server.create_database("machines")
    grid = ["--leak", "0,0.1,0.2,0.3,0.5", "--sub", "0,0.4", "--seeds", "0,1,2"]
    created = run_cli("create", "--name", "m", "--storage", url, *TINY, "--max-steps", "5", *grid, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    shared = tmp_path / "shared-artifacts"
    (home_a, data_a), (home_b, data_b) = machine_dir(tmp_path, "a"), machine_dir(tmp_path, "b")
    work = ["work", "--name", "m", "--storage", url, "--artifacts", str(shared), *MACHINE_FLAGS]
    refused = run_cli(*work, "--sub", "0.4", cwd=home_b)
    assert_one_line_error(refused, "--sub is part of the study's design")

    # Machine a stops before storing the third seed of its first trial: two seeds stored, with pictures.
    machine_a = PausedCommand(3, [TRAINED_SEEDS], [*work, "--data-dir", str(data_a)], cwd=home_a)
    assert machine_a.wait_paused()
    machine_b = PausedCommand(0, [TRAINED_SEEDS], [*work, "--data-dir", str(data_b), "--workers", "2"], cwd=home_b)
    observer = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"application_name": OBSERVER}})
    peak, study = 0, optuna.load_study(study_name="m", storage=observer)
    while not study.get_trials(states=(TrialState.COMPLETE,)):  # both machines at work on the study
        peak = max(peak, connection_count(postgres_server, "machines"))
        assert machine_b.proc.poll() is None, machine_b.finish()
    machine_a.kill()
    while machine_b.proc.poll() is None:
        peak = max(peak, connection_count(postgres_server, "machines"))
        time.sleep(0.2)
    rc, out, err = machine_b.finish()
    assert rc == 0, err

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len(complete) == 10 and len({(t.params["leak"], t.params["sub"]) for t in complete}) == 10
    assert set(fresh_seeds(trials).values()) == {1} and len(fresh_seeds(trials)) == 30  # each trained once
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and sorted(seed_records(killed[0])) == [0, 1]
    retry = next(t for t in complete if t.params == killed[0].params)
    assert [seed_records(retry)[s].get("reused_from") for s in (0, 1, 2)] == [killed[0].number] * 2 + [None]
    assert not any(record.get("picture_missing") for t in complete for record in seed_records(t).values())
    for trial in complete:  # a history and a picture per seed, in the one store
        names = sorted(meta.filename for meta in get_all_artifact_meta(trial, storage=study._storage))
        assert names == [f"activations_seed{s}.{kind}" for s in (0, 1, 2) for kind in ("npz", "png")]
    assert len(list(shared.iterdir())) == 64  # 30 seeds' histories and pictures, and the 4 copies the retry attached
    # The connection budget of README's "Many machines": 2 per worker process, and 2 for the command
    # that starts workers (none more where it trains itself): a, one worker, 2; b, two workers, 6.
    assert peak <= 2 + (2 * 2 + 2), peak


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is needed for this test: scripts/test.sh installs Debian's faketime"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("offset", ["-1h", "+1h"])
def test_a_machine_whose_clock_is_an_hour_off_neither_fails_live_trials_nor_keeps_dead_ones(
        postgres_server, tmp_path, offset):
    database = f"clock{'ahead' if offset[0] == '+' else 'behind'}"
    postgres_server.create_database(database)
    url = postgres_server.url(database)
    api.create("c", storage=url, leak=(0, 0.2), sub=(0,), seeds=(0,), model="mlp", widths=(16,), lr=0.05,
               max_steps=5, stats_every=5)
    skewed = {"LD_PRELOAD": libfaketime(), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
    work = ["work", "--name", "c", "--storage", url, *MACHINE_FLAGS]

    # Asked for a trial, not yet beating: the trial's start is written from the skewed clock.
    skewed_machine = PausedCommand(1, [FIRST_HEARTBEAT], work, cwd=tmp_path, env=skewed)
    assert skewed_machine.wait_paused()
    checker = open_storage(url, heartbeat_seconds=1, grace_seconds=3)
    study = optuna.load_study(study_name="c", storage=checker)
    optuna.storages.fail_stale_trials(study)  # this machine's clock is right: an hour from the other's
    assert [t.state for t in study.get_trials() if t.state != TrialState.WAITING] == [TrialState.RUNNING]
    skewed_machine.release()
    rc, _, err = skewed_machine.finish()
    assert rc == 0, err
    assert {t.state for t in study.get_trials()} == {TrialState.COMPLETE}  # nothing failed early

    # A skewed machine that dies before its first heartbeat: its trial is failed and retried.
    optuna.delete_study(study_name="c", storage=url)
    api.create("c", storage=url, leak=(0, 0.2), sub=(0,), seeds=(0,), model="mlp", widths=(16,), lr=0.05,
               max_steps=5, stats_every=5)
    dying = PausedCommand(1, [FIRST_HEARTBEAT], work, cwd=tmp_path, env=skewed)
    assert dying.wait_paused()
    dying.kill()
    other = run_cli(*work, cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    states = Counter(t.state for t in optuna.load_study(study_name="c", storage=url).get_trials())
    assert states == {TrialState.COMPLETE: 2, TrialState.FAIL: 1}


@pytest.mark.slow
def test_a_server_with_no_connection_left_is_one_line_with_the_fixes(tmp_path):
    server = PostgresServer(max_connections=3, superuser_reserved_connections=0)
    try:
        server.create_database("full")
        url = server.url("full")
        holders = [psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
                   for _ in range(3)]
        proc = run_cli("create", "--name", "f", "--storage", url, cwd=tmp_path)
        assert_one_line_error(proc, "the server has no connection left (PostgreSQL's max_connections")
        assert "run fewer --workers, put PgBouncer in front of the server, or raise max_connections" in proc.stderr
        for holder in holders:
            holder.close()
        assert run_cli("create", "--name", "f", "--storage", url, cwd=tmp_path).returncode == 0
    finally:
        server.close()


@pytest.mark.slow
def test_connections_refused_mid_study_stop_it_in_one_line_and_nothing_is_lost(tmp_path):
    with server_with_role("carol", "s3cret-pw") as server:
        url = server.url("initstudy", "carol", "s3cret-pw")
        api.create("r", storage=url, leak=(0, 0.1, 0.2, 0.3), sub=(0, 0.4), seeds=(0, 1, 2), model="mlp",
                   widths=(16,), lr=0.05, max_steps=5, stats_every=5)
        work = ["work", "--name", "r", "--storage", url, *MACHINE_FLAGS, "--storage-retry-seconds", "3"]
        machine = PausedCommand(4, [TRAINED_SEEDS], work, cwd=tmp_path)
        assert machine.wait_paused()  # one trial done, the next one's first seed trained
        server.sql("ALTER ROLE carol CONNECTION LIMIT 0")
        server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'carol'")
        machine.release()
        rc, out, err = machine.finish()
        assert rc == 3 and len(err.strip().splitlines()) == 2, err  # the pause's mark, then the one line
        line = err.strip().splitlines()[-1]
        assert "refused connections for 3 s: the server has no connection left" in line and "s3cret" not in line
        server.sql("ALTER ROLE carol CONNECTION LIMIT -1")
        again = run_cli(*work, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        study = optuna.load_study(study_name="r", storage=url)
        assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 8
        assert set(fresh_seeds(study.trials).values()) == {1} and len(fresh_seeds(study.trials)) == 24
