"""Bad input and damaged files never touch a stored study: one line, exit 2, the database byte-for-byte
as it was. Each case runs the real command against an existing study (or a damaged copy of one)."""

import gzip
import hashlib
import os
import shutil
import sqlite3
from contextlib import closing

import optuna
import pytest
from optuna.storages._rdb import models as optuna_models
from optuna.trial import TrialState

from conftest import ROOT, TINY, assert_one_line_error, free_port, run_cli
from study.design import CONFIG_ATTR
from study.errors import BadInput
from study.storage import check_sqlite_file

GRID = ["--leak", "0,0.2", "--sub", "0", "--seeds", "0"]


def tree_digest(directory) -> str:
    """Every file below `directory` (the database, its journal, the artifacts), names and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A finished two-trial study in <dir>/studies/base.db."""
    home = tmp_path_factory.mktemp("stored")
    proc = run_cli("search", "--name", "base", *TINY, *GRID, cwd=home)
    assert proc.returncode == 0, proc.stderr
    return home


def empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def truncated_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        shutil.copy(f"/usr/share/datasets/fashion-mnist/{name}.gz", data)
    labels = data / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-100]))
    return str(data)


# (extra flags, or a function of tmp_path giving them; the message's key words)
AGAINST_THE_STORED_STUDY = [
    (["--leak", "0,1"], "--leak values must be in [0, 1)"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "many"], "--batch-size 'many': expected an integer"),
    (["--init-scale", "-1"], "--init-scale values must be positive"),
    (["--sampler", "bayes"], "invalid choice: 'bayes'"),
    (["--model", "resnet"], "invalid choice: 'resnet'"),
    (["--n-trials", "0"], "--n-trials must be >= 1"),
    (["--seeds", "0,a"], "--seeds '0,a'"),
    (["--workers", "0"], "--workers must be a number >= 1 or auto, got 0"),
    (["--workers", "all"], "--workers must be a number >= 1 or auto, got all"),
    (["--gpus", "0,x"], "--gpus '0,x'"),
    (["--heartbeat-seconds", "30", "--grace-seconds", "10"], "must exceed --heartbeat-seconds"),
    (["--storage-retry-seconds", "-1"], "--storage-retry-seconds must be >= 0"),
    (["--sub", "0,0.4"], "space.sub: stored 0, asked 0,0.4"),
    (["--lr", "0.1"], "space.lr: stored 0.05, asked 0.1"),
    (["--epochs", "2"], "optim.epochs: stored 1, asked 2"),
    (lambda tmp: ["--data-dir", empty_dir(tmp)], "4 FashionMNIST files missing"),
    (lambda tmp: ["--data-dir", truncated_data(tmp)], "t10k-labels-idx1-ubyte.gz is truncated"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", AGAINST_THE_STORED_STUDY, ids=[m for _, m in AGAINST_THE_STORED_STUDY])
def test_bad_input_leaves_the_stored_study_unchanged(stored, tmp_path, flags, message):
    if callable(flags):
        flags = flags(tmp_path)
    before = tree_digest(stored / "studies")
    proc = run_cli("search", "--name", "base", *TINY, *GRID, *flags, cwd=stored)
    assert_one_line_error(proc, message)
    assert tree_digest(stored / "studies") == before


def copy_study(stored, tmp_path):
    target = tmp_path / "studies"
    shutil.copytree(stored / "studies", target)
    return target / "base.db"


@pytest.mark.slow
def test_truncated_database_is_refused(stored, tmp_path):
    db = copy_study(stored, tmp_path)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    before = tree_digest(tmp_path / "studies")
    assert_one_line_error(run_cli("search", "--name", "base", *TINY, *GRID, cwd=tmp_path), "base.db is")
    assert tree_digest(tmp_path / "studies") == before


@pytest.mark.slow
def test_garbage_database_is_refused(tmp_path):
    db = tmp_path / "studies" / "base.db"
    db.parent.mkdir()
    db.write_bytes(os.urandom(8192))
    before = tree_digest(tmp_path / "studies")
    assert_one_line_error(run_cli("search", "--name", "base", *TINY, *GRID, cwd=tmp_path),
                          "not a readable SQLite database")
    assert tree_digest(tmp_path / "studies") == before


@pytest.mark.slow
def test_directory_where_the_database_should_be(tmp_path):
    (tmp_path / "studies" / "base.db").mkdir(parents=True)
    assert_one_line_error(run_cli("search", "--name", "base", *TINY, *GRID, cwd=tmp_path), "is a directory")


@pytest.mark.slow
def test_foreign_sqlite_database_is_not_taken_over(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    before = db.read_bytes()
    proc = run_cli("search", "--name", "base", "--storage", f"sqlite:///{db}", *TINY, *GRID, cwd=tmp_path)
    assert_one_line_error(proc, "is a SQLite database of something else (tables: notes)")
    assert db.read_bytes() == before


@pytest.mark.slow
def test_storage_server_that_is_not_running(tmp_path):
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/initstudy"
    assert_one_line_error(run_cli("search", "--storage", url, *TINY, *GRID, cwd=tmp_path), "cannot open storage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_read_only_study_directory(stored, tmp_path):
    db = copy_study(stored, tmp_path)
    before = tree_digest(tmp_path / "studies")
    db.parent.chmod(0o555)
    try:
        # Root writes anywhere; without the two capabilities that let it, it meets the permissions.
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        import subprocess
        import sys
        proc = subprocess.run([*prefix, sys.executable, "-m", "study", "search", "--name", "base", *TINY, *GRID],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=300)
    finally:
        db.parent.chmod(0o755)
    assert_one_line_error(proc, "is not writable")
    assert tree_digest(tmp_path / "studies") == before


@pytest.mark.slow
def test_check_sqlite_file_accepts_a_healthy_database(stored):
    check_sqlite_file(stored / "studies" / "base.db")
    with pytest.raises(BadInput, match="is a directory"):
        check_sqlite_file(stored / "studies")


def test_a_schema_half_made_by_a_command_started_alongside_is_opened_not_refused(tmp_path):
    """Optuna makes its tables one by one; a command that looks in between finds `studies` and no
    `version_info` yet. CI once saw the third of three commands refuse the database for that."""
    import sqlalchemy
    from study.storage import OPTUNA_TABLES, open_storage

    db = tmp_path / "half.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    optuna_models.BaseModel.metadata.tables["studies"].create(engine)
    engine.dispose()
    check_sqlite_file(db)
    open_storage(f"sqlite:///{db}").engine.dispose()
    with closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= OPTUNA_TABLES - {"alembic_version"}

    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(BadInput, match=r"something else \(tables: notes\)"):
        check_sqlite_file(db)


def test_a_database_that_changes_while_checked_is_read_again(tmp_path, monkeypatch):
    """An unlocked read may catch a writer mid-page: refused only when the file stood still."""
    import study.storage as storage

    db = tmp_path / "busy.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    reads = []

    def written_to_while_read(path):
        reads.append(path)
        if len(reads) == 1:
            path.with_name(path.name + "-journal").write_bytes(b"a writer's journal")
            raise BadInput("half-written")

    monkeypatch.setattr(storage, "_check_sqlite_contents", written_to_while_read)
    check_sqlite_file(db)
    assert len(reads) == 2
    monkeypatch.undo()
    with pytest.raises(BadInput, match="something else"):
        check_sqlite_file(db)


def _open_after(barrier, url, answers):
    from study.storage import open_storage
    barrier.wait()
    try:
        open_storage(url)
        answers.put("ok")
    except BadInput as e:
        answers.put(str(e))


@pytest.mark.slow
def test_commands_started_together_on_a_new_database_all_open_it(tmp_path):
    """Four processes create Optuna's tables at the same instant, three rounds; before the fix about
    two rounds in three had a loser fail with "table ... already exists"."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/race{round_}.db"
        barrier, answers = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_after, args=(barrier, url, answers)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [answers.get(timeout=5) for _ in procs] == ["ok"] * 4


@pytest.mark.slow
@pytest.mark.parametrize("objective, directions", [("accuracy", ["maximize"]), ("stability", ["maximize", "minimize"])])
def test_a_creation_stopped_before_the_design_was_stored_is_finished_by_the_next_command(tmp_path, objective,
                                                                                          directions):
    """A command killed after Optuna made the study and before its design was stored leaves an empty
    study without a design: the next command with a design adopts it, for either objective."""
    storage = f"sqlite:///{tmp_path}/studies/s.db"
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="s", storage=storage, directions=directions)
    proc = run_cli("search", "--name", "s", "--storage", storage, *TINY, "--leak", "0", "--sub", "0", "--seeds", "0",
                   "--max-steps", "2", "--objective", objective, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.user_attrs[CONFIG_ATTR]["objective"] == objective
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert study.metric_names == ["mean_val_acc", "acc_std"][:len(directions)]


@pytest.mark.slow
def test_an_empty_study_made_for_the_other_objective_and_a_foreign_study_are_refused(tmp_path):
    storage = f"sqlite:///{tmp_path}/studies/s.db"
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    flags = ("--storage", storage, *TINY, "--leak", "0", "--sub", "0", "--seeds", "0", "--max-steps", "2")
    assert_one_line_error(run_cli("search", "--name", "s", *flags, cwd=tmp_path),
                          "made to maximize and minimize, not maximize: use the other --objective")
    foreign = optuna.create_study(study_name="f", storage=storage)
    foreign.enqueue_trial({"x": 1.0})
    assert_one_line_error(run_cli("search", "--name", "f", *flags, cwd=tmp_path),
                          "was not made by initstudy (it has trials but no initstudy design)")
    assert "s" in optuna.get_all_study_names(storage) and not optuna.load_study(study_name="s", storage=storage).user_attrs
