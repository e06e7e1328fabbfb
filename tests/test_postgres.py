"""A study shared through a real PostgreSQL server: three workers, exact trial count, no duplicates.

The server is the tests' own (tests/pg_server.py), started for this module and stopped at the end.
"""

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY, run_cli
from pg_server import PostgresServer


@pytest.fixture(scope="module")
def postgres_url():
    server = PostgresServer()
    try:
        server.create_database("initstudy")
        yield server.url("initstudy")
    finally:
        server.close()


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
