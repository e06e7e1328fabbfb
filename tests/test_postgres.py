"""A study shared through a real PostgreSQL server: three workers, exact trial count, no duplicates.

The server is Debian's `postgresql` (scripts/test.sh installs it), started here with initdb in a
temporary directory, listening on 127.0.0.1 on a free port, and stopped at the end.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY, free_port, run_cli


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is needed for this test: scripts/test.sh installs Debian's postgresql"
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_url():
    bin_dir = pg_bin()
    home = Path(tempfile.mkdtemp(prefix="initstudy-pg-"))
    # initdb refuses to run as root: as root, run the server as Debian's postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(home, "postgres", "postgres")
    port = free_port()

    def pg(*args):
        subprocess.run([*as_user, *args], cwd=home, check=True, capture_output=True, timeout=120)

    pg(bin_dir / "initdb", "-D", home / "data", "--auth=trust", "-U", "postgres")
    pg(bin_dir / "pg_ctl", "-D", home / "data", "-l", home / "log", "-w", "start",
       "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1")
    try:
        pg(bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "initstudy")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/initstudy"
    finally:
        pg(bin_dir / "pg_ctl", "-D", home / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


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
