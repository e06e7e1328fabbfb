"""Create once, join from anywhere (`study.create`/`study.work`, `python -m study create|work`), the
design read back from the storage (`study.stored_design`), the artifact store every machine names,
and Optuna callbacks through the API. On SQLite here; the PostgreSQL cases are in test_postgres.py."""

import io
import sys

import optuna
import pytest
from optuna.trial import TrialState

import study as api
from conftest import assert_one_line_error, run_cli
from pausing import PausedCommand
from study.artifacts import Prefixed, artifact_store
from study.axes import Range
from study.config import ModelConfig, RunConfig, TrainConfig
from study.design import DynamicsDesign, StudyDesign, study_config, upgrade_stored_config
from study.errors import BadInput, FieldError
from study.ladder import EdgeDesign
from study.place import StudyPlace
from study.records import seed_records
from study.storage import config_differences
from study.stored_design import design_of, run_of
from test_stored_studies import FIXTURE

TINY = dict(model="mlp", widths=(16,), lr=0.05, max_steps=5, stats_every=5)
TINY_FLAGS = ["--model", "mlp", "--widths", "16", "--lr", "0.05", "--max-steps", "5", "--stats-every", "5"]


@pytest.mark.parametrize("design, run", [
    (StudyDesign(), RunConfig()),
    (StudyDesign(sampler="tpe", objective="stability", leak=Range(0, 0.5), lr=Range(0.01, 1, log=True),
                 warmup_steps=(0, 5), seeds=(3, 1)), RunConfig(model=ModelConfig(model="mlp", widths=(8, 4)))),
    (EdgeDesign(sub=(0.0, 0.4), lr=Range(0.05, 0.8, log=True), max_seeds=7, reliability=0.8, method="bisect"),
     RunConfig(train=TrainConfig(max_steps=9, dtype="float64"))),
    (EdgeDesign(lr=Range(0.05, 0.8, log=True), method="adaptive", precision=1.4, round_seeds=3), RunConfig()),
    (DynamicsDesign(leak=(0.0, 0.1), lr=(0.1, 0.2), steps=4, catapult_factor=3.0, seeds=(0, 5)),
     RunConfig(train=TrainConfig(diverge_factor=None, diverge_loss=100.0))),
])
def test_the_stored_configuration_gives_back_the_design_that_stored_it(design, run):
    stored = study_config(design, run)
    assert config_differences(stored, study_config(design_of(stored), run_of(stored))) == []
    assert type(design_of(stored)) is type(design)


def test_a_study_stored_by_0_1_0_gives_back_its_design():
    stored = upgrade_stored_config(optuna.load_study(study_name="v010", storage=f"sqlite:///{FIXTURE}")
                                   .user_attrs["initstudy_config"])
    assert config_differences(stored, study_config(design_of(stored), run_of(stored))) == []


def test_create_trains_nothing_and_work_runs_the_stored_design(tmp_path, fashion):
    storage = f"sqlite:///{tmp_path}/c.db"
    created = api.create("c", storage=storage, leak=(0, 0.2), sub=(0, 0.4), seeds=(0, 1), **TINY)
    waiting = created.optuna.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 4 and not created.optuna.get_trials(states=(TrialState.COMPLETE,))
    api.create("c", storage=storage, leak=(0, 0.2), sub=(0, 0.4), seeds=(0, 1), **TINY)  # again: harmless
    assert len(api.load("c", storage).optuna.trials) == 4
    with pytest.raises(BadInput, match="sub: stored 0,0.4, asked 0,0.7"):
        api.create("c", storage=storage, leak=(0, 0.2), sub=(0, 0.7), seeds=(0, 1), **TINY)

    done = api.work("c", storage=storage, progress=False, artifacts=str(tmp_path / "shared"))
    trials = done.optuna.get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.params["leak"], t.params["sub"]) for t in trials) == [(0, 0), (0, 0.4), (0.2, 0), (0.2, 0.4)]
    assert all(sorted(seed_records(t)) == [0, 1] for t in trials)
    assert len(list((tmp_path / "shared").iterdir())) == 16  # a history and a picture per seed, in the store named
    assert len(done.optuna.trials) == 4  # nothing trained twice


def test_work_reads_the_target_of_a_sampled_study(tmp_path, fashion):
    storage = f"sqlite:///{tmp_path}/t.db"
    api.create("t", storage=storage, sampler="random", n_trials=3, leak=Range(0, 0.3), seeds=(0,), **TINY)
    done = api.work("t", storage=storage, progress=False)
    assert len(done.optuna.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_create_refuses_what_each_machine_gives_itself(tmp_path):
    for key, value in (("workers", 2), ("data_dir", str(tmp_path)), ("device", "cpu"), ("artifacts", "x")):
        with pytest.raises(BadInput, match=f"`{key}` is each machine's own"):
            api.create("m", storage=f"sqlite:///{tmp_path}/m.db", **{key: value})
    assert not (tmp_path / "m.db").exists()


def test_work_needs_a_created_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/w.db"
    api.create("there", storage=storage, seeds=(0,), **TINY)
    with pytest.raises(BadInput, match="no study 'absent'"):
        api.work("absent", storage=storage)
    optuna.create_study(study_name="bare", storage=storage)  # made by Optuna alone
    with pytest.raises(BadInput, match="has no initstudy design yet: create it first"):
        api.work("bare", storage=storage)


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    """A created study's database (SQLite) and its storage URL."""
    db = tmp_path_factory.mktemp("created") / "r.db"
    assert run_cli("create", "--name", "r", "--storage", f"sqlite:///{db}", "--seeds", "0", *TINY_FLAGS).returncode == 0
    return db, f"sqlite:///{db}"


@pytest.mark.parametrize("flag, value", [("--leak", "0.1"), ("--seeds", "0,1"), ("--model", "cnn"),
                                         ("--max-seeds", "4"), ("--create-only", None)])
def test_work_refuses_a_design_flag_in_one_line_and_leaves_the_study_alone(created, flag, value):
    db, storage = created
    before = db.read_bytes()
    proc = run_cli("work", "--name", "r", "--storage", storage, flag, *([value] if value else []))
    assert_one_line_error(proc, f"{flag} is part of the study's design, stored when it was created")
    assert db.read_bytes() == before


@pytest.mark.slow
def test_an_edge_search_created_on_one_machine_is_run_by_work(tmp_path, fashion):
    storage = f"sqlite:///{tmp_path}/e.db"
    flags = [*TINY_FLAGS, "--leak", "0", "--sub", "0", "--lr", "0.1,0.4,1.6", "--max-seeds", "4", "--method", "bisect"]
    created = run_cli("edge", "--name", "e", "--storage", storage, "--create-only", *flags)
    assert created.returncode == 0, created.stderr
    assert "work --name e" in created.stdout
    assert not optuna.load_study(study_name="e", storage=storage).trials
    worked = run_cli("work", "--name", "e", "--storage", storage, "--out", str(tmp_path / "out"))
    assert worked.returncode == 0, worked.stderr
    assert (tmp_path / "out" / "edge.csv").is_file()
    probes = len(optuna.load_study(study_name="e", storage=storage).trials)
    again = run_cli("edge", "--name", "e", "--storage", storage, "--out", str(tmp_path / "out"), *flags)
    assert again.returncode == 0, again.stderr  # the same design, given in full, continues the study: done
    assert len(optuna.load_study(study_name="e", storage=storage).trials) == probes


def test_callbacks_see_every_trial_as_it_is_stored(tmp_path, fashion):
    seen = []
    api.search("cb", storage=f"sqlite:///{tmp_path}/cb.db", leak=(0, 0.2), sub=(0,), seeds=(0,), progress=False,
               callbacks=[lambda s, trial: seen.append((s.study_name, trial.state, trial.params["leak"]))], **TINY)
    assert sorted(seen) == [("cb", TrialState.COMPLETE, 0.0), ("cb", TrialState.COMPLETE, 0.2)]


class DictStore:
    """An in-memory artifact store: Optuna's protocol, for the prefix's test."""

    def __init__(self):
        self.files = {}

    def open_reader(self, artifact_id):
        return io.BytesIO(self.files[artifact_id])

    def write(self, artifact_id, content_body):
        self.files[artifact_id] = content_body.read()

    def remove(self, artifact_id):
        del self.files[artifact_id]


def test_a_prefixed_store_keeps_every_key_under_its_prefix():
    inner = DictStore()
    store = Prefixed(inner, "/team/study-1/")
    store.write("abc", io.BytesIO(b"png"))
    assert inner.files == {"team/study-1/abc": b"png"} and store.open_reader("abc").read() == b"png"
    store.remove("abc")
    assert inner.files == {}


def test_an_s3_store_without_boto3_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as where boto3 is not installed
    place = StudyPlace("x", f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(BadInput, match="needs boto3 on this machine: pip install boto3"):
        artifact_store("s3://bucket/prefix", place)
    with pytest.raises(BadInput, match="names no bucket"):
        artifact_store("s3://", place)


# Every storage write a creation makes (Optuna's cache calls the storage's methods; `_create_new_trial`
# is counted besides `create_new_trial`, a pause between the two as well).
CREATION_WRITES = [f"study.faults:ResilientStorage.{name}" for name in (
    "create_new_study", "set_study_system_attr", "set_study_user_attr", "create_new_trial", "_create_new_trial",
    "set_trial_param", "set_trial_system_attr")]


@pytest.mark.slow
def test_a_creation_killed_between_any_two_storage_calls_is_finished_by_the_next_command(tmp_path):
    storage = f"sqlite:///{tmp_path}/k.db"
    create = ["create", "--name", "k", "--storage", storage, "--leak", "0,0.2", "--sub", "0", "--seeds", "0",
              *TINY_FLAGS]
    step = 0
    while True:
        step += 1
        command = PausedCommand(step, CREATION_WRITES, create, cwd=tmp_path)
        if not command.wait_paused():  # the creation made fewer writes than `step`: every cut was tried
            assert command.finish()[0] == 0
            break
        command.kill()
        again = run_cli(*create, cwd=tmp_path)
        assert again.returncode == 0, (step, again.stderr)
        trials = optuna.load_study(study_name="k", storage=storage).trials
        assert sorted(t.system_attrs["fixed_params"]["leak"] for t in trials) == [0, 0.2], step  # queued once
        assert {t.state for t in trials} == {TrialState.WAITING}, step
        optuna.delete_study(study_name="k", storage=storage)  # the next step cuts a fresh creation
    assert step > 5  # the study, its metric names, its design, two grid points


def test_create_refuses_a_value_its_storage_would_round(tmp_path):
    with pytest.raises(FieldError, match=r"0.123456789 has more digits than a study stores \(0,0.123457\)"):
        api.create("p", storage=f"sqlite:///{tmp_path}/p.db", leak=(0, 0.123456789))
    assert not (tmp_path / "p.db").exists()
