"""No password is ever printed or stored, and a study can run with no password on any command line.

Every failing path a user can reach is driven with a distinctive password: it must appear in no
output and in no file the project wrote (the study directory, and what it stored in PostgreSQL).
"""

import io
import os
import signal
import stat
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, TINY, free_port, run_cli, sigint_as_in_a_terminal
from pg_server import server_with_role
from processes import in_session, workers_in_session
from signalling import signalling
from study import masking
from study.place import STORAGE_ENV, StudyPlace

PASSWORD = "Quokka-7f3e-Secret"
OTHER = "Wombat-91c2-Secret"  # the password of a role the study must not see either
GRID = ["--leak", "0,0.2", "--sub", "0", "--seeds", "0"]


@pytest.fixture(scope="module")
def server():
    with server_with_role("alice", PASSWORD) as pg:
        yield pg


def files_written(directory):
    return [p for p in directory.rglob("*") if p.is_file()]


def assert_no_secret(*texts, directory=None):
    for text in texts:
        assert PASSWORD not in text and OTHER not in text, text
    for path in files_written(directory) if directory else []:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and OTHER.encode() not in data, path


def one_line(proc, code, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# --- the masking itself --------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    (f"postgresql+psycopg2://alice:{PASSWORD}@db.example:5432/initstudy",
     "postgresql+psycopg2://alice:***@db.example:5432/initstudy"),
    ("postgresql+psycopg2://alice@db.example/initstudy", "postgresql+psycopg2://alice@db.example/initstudy"),
    ("sqlite:///studies/quick.db", "sqlite:///studies/quick.db"),
    ("mysql://bob:p%40ss@h/d", "mysql://bob:***@h/d"),
])
def test_mask_url(url, shown):
    assert masking.mask_url(url) == shown


def test_redact_masks_url_passwords_query_passwords_and_remembered_secrets():
    masking.remember(f"postgresql://carol:{OTHER}@h/d")
    text = (f"cannot reach postgresql+psycopg2://alice:{PASSWORD}@h:1/d; also host=h?sslmode=require&password={PASSWORD}; "
            f"a bare {OTHER} in a driver's message")
    shown = masking.redact(text)
    assert PASSWORD not in shown and OTHER not in shown
    assert "alice:***@h:1/d" in shown and "password=***" in shown and "a bare *** in" in shown


def test_a_short_password_is_masked_in_urls_but_not_as_a_bare_word():
    masking.remember("postgresql://dave:ab@h/d")
    assert masking.redact("postgresql://dave:ab@h/d about") == "postgresql://dave:***@h/d about"


def test_the_output_guard_masks_everything_written():
    buffer = io.StringIO()
    stream = masking.RedactingStream(buffer)
    print(f"sqlite is fine, postgresql://alice:{PASSWORD}@h/d is not", file=stream)
    assert buffer.getvalue() == "sqlite is fine, postgresql://alice:***@h/d is not\n"


def test_the_storage_default_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert StudyPlace(name="n").storage_url() == "sqlite:///studies/n.db"
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg2://alice@h/d")
    assert StudyPlace(name="n").storage_url() == "postgresql+psycopg2://alice@h/d"
    assert StudyPlace(name="n", storage="sqlite:///x.db").storage_url() == "sqlite:///x.db"


# --- every failing path, as a user meets it ------------------------------------------------------

@pytest.mark.slow
def test_unreachable_server(tmp_path):
    url = f"postgresql+psycopg2://alice:{PASSWORD}@127.0.0.1:{free_port()}/initstudy"
    for command in (["search", "--name", "s", *TINY, *GRID], ["heatmaps", "--name", "s"], ["report", "--name", "s"],
                    ["dashboard", "--name", "s"]):
        proc = run_cli(*command, "--storage", url, cwd=tmp_path)
        one_line(proc, 2, "cannot open storage", "alice:***@127.0.0.1")
        assert_no_secret(proc.stdout, proc.stderr, directory=tmp_path)


def test_a_password_in_a_flag_argparse_refuses(tmp_path):
    proc = run_cli("search", f"--storage=postgresql://alice:{PASSWORD}@h/d", "--epochs", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert_no_secret(proc.stdout, proc.stderr, directory=tmp_path)


@pytest.mark.slow
def test_wrong_password_and_bad_database_against_a_real_server(server, tmp_path):
    wrong = server.url("initstudy", "alice", OTHER)
    proc = run_cli("search", "--name", "s", "--storage", wrong, *TINY, *GRID, cwd=tmp_path)
    one_line(proc, 2, "password authentication failed", "alice:***@")
    assert_no_secret(proc.stdout, proc.stderr, directory=tmp_path)

    missing = server.url("nosuchdb", "alice", PASSWORD)
    proc = run_cli("search", "--name", "s", "--storage", missing, *TINY, *GRID, cwd=tmp_path)
    one_line(proc, 2, 'database "nosuchdb" does not exist', "alice:***@")
    assert_no_secret(proc.stdout, proc.stderr, directory=tmp_path)


@pytest.mark.slow
def test_a_study_run_interrupted_and_refused_with_the_password_on_the_command_line(server, tmp_path):
    url = server.url("initstudy", "alice", PASSWORD)
    args = ["search", "--name", "secret", "--storage", url, *TINY, "--leak", "0.1", "--sub", "0.4",
            "--seeds", ",".join(map(str, range(24)))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    interrupted_after_a_seed = signalling(signal.SIGINT, "command", tmp_path / "signalled")
    proc = subprocess.Popen([*interrupted_after_a_seed, *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_as_in_a_terminal)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again" in err and "alice:***@" in err and "password hidden" in err
    assert_no_secret(out, err, directory=tmp_path)

    # The same study with another configuration: refused, and the refusal shows no password.
    refused = run_cli(*args[:-2], "--seeds", "0,1", cwd=tmp_path)
    one_line(refused, 2, "was run with another configuration")
    # The finished study, its dashboard hint and its report.
    done = run_cli(*args, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "--storage postgresql+psycopg2://alice:***@" in done.stdout
    report = run_cli("report", "--name", "secret", "--storage", url, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert_no_secret(refused.stderr, done.stdout, done.stderr, report.stdout, report.stderr, directory=tmp_path)
    assert files_written(tmp_path / "studies" / "secret")
    # Nothing the project stored in the database holds it either.
    assert_no_secret(server.dump("initstudy"))


@pytest.mark.slow
def test_a_study_with_no_password_anywhere_pgpass_and_the_environment(server, tmp_path):
    """The README's many-machines form: the URL names no password; libpq reads it from ~/.pgpass."""
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{server.port}:initstudy:alice:{PASSWORD}\n")
    pgpass.chmod(stat.S_IRUSR | stat.S_IWUSR)  # libpq ignores a .pgpass others can read
    (tmp_path / "work").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGPASSFILE": str(pgpass),
           STORAGE_ENV: server.url("initstudy", "alice")}
    started = subprocess.Popen([sys.executable, "-m", "study", "search", "--name", "nopw", *TINY,
                                "--leak", "0,0.1,0.2,0.5", "--sub", "0", "--seeds", "0", "--workers", "2"],
                               cwd=tmp_path / "work", env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    workers, lines = set(), set()  # every process of the command's: itself, its fork server, its workers
    while started.poll() is None:
        workers |= set(workers_in_session(started.pid))
        lines |= {command.replace(b"\0", b" ").decode() for _, command in in_session(started.pid).values()}
        time.sleep(0.2)
    out, err = started.communicate()
    assert started.returncode == 0, err
    assert workers, "no worker was seen running"
    assert_no_secret(out, err, *lines, directory=tmp_path / "work")
    complete = optuna.load_study(study_name="nopw", storage=server.url("initstudy", "alice", PASSWORD)).get_trials(
        states=(TrialState.COMPLETE,))
    assert len(complete) == 4
