"""The study on real FashionMNIST (small MLP, 2 seeds, a few settings): storage, resume, grid, heatmaps."""

import hashlib
import json
import shutil
import statistics
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import study as api
from conftest import TINY, assert_one_line_error, run_cli
from study.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.axes import NAMES as SEARCHED, Range
from study.design import CONFIG_ATTR, MachineConfig, StudyDesign
from study.place import StudyPlace
from study.errors import BadInput
from study.plots import HEATMAP_METRICS, heatmap_tables, save_figures, study_figures
from study.records import seed_records
from study.results import seed_frame, trials_frame
from study.runner import open_search
from study.storage import load_existing_study

SMALL = dict(model="mlp", widths=(32,), lr=0.05)  # the run configuration of every study here
BOOKKEEPING = dict(max_steps=5)  # for tests of what is stored and retried, not of accuracy
SMALL_RUN = RunConfig(model=ModelConfig(model="mlp", widths=(32,)), optim=OptimConfig(lr=0.05))


def small_search(tmp_path, name="s", **overrides):
    """A 2x2 grid, 2 seeds, on the small MLP, run to its end through the Python API: the optuna study."""
    settings = dict(storage=f"sqlite:///{tmp_path}/{name}.db", leak=(0, 0.2), sub=(0, 0.4), seeds=(0, 1), **SMALL)
    return api.search(name, progress=False, **{**settings, **overrides}).optuna


def complete_trials(study):
    return study.get_trials(states=(TrialState.COMPLETE,))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2x2 grid study with 2 seeds; shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("finished")
    return StudyPlace("s", f"sqlite:///{tmp_path}/s.db"), small_search(tmp_path)


@pytest.mark.slow
def test_every_trial_stores_each_seed_and_the_summary(finished):
    config, study = finished
    trials = complete_trials(study)
    assert len(trials) == 4
    for trial in trials:
        records = seed_records(trial)
        assert sorted(records) == [0, 1]
        accs = [records[s]["val_acc"] for s in (0, 1)]
        assert all(0.7 < a < 1 for a in accs)
        assert trial.value == pytest.approx(statistics.fmean(accs))
        assert trial.user_attrs["acc_std"] == pytest.approx(statistics.stdev(accs))
        assert trial.user_attrs["worst_acc"] == min(accs)
        assert trial.user_attrs["frac_trained"] == 1.0
        assert trial.user_attrs["n_diverged"] == 0
        assert [set(layer) for layer in trial.user_attrs["layers"]] == [{"mean", "std", "near_zero_frac", "dead_units"}]
        # Each seed's activation history and its picture, drawn when first seen (`study.histories`).
        names = sorted(json.loads(v)["filename"] for k, v in trial.system_attrs.items() if k.startswith("artifacts:"))
        assert names == ["activations_seed0.npz", "activations_seed0.png", "activations_seed1.npz", "activations_seed1.png"]
    assert study.user_attrs[CONFIG_ATTR]["seeds"] == [0, 1]


@pytest.mark.slow
def test_a_notebook_sees_a_seeds_activations_drawn_from_its_stored_history(finished):
    place, study = finished
    trial = complete_trials(study)[0]
    figure = api.load("s", place.storage).activations(trial.number, 1)
    val_acc = seed_records(trial)[1]["val_acc"]
    assert figure.get_suptitle().endswith(f"seed 1: val acc {val_acc:.3f}")
    with pytest.raises(BadInput, match="no activation history of seed 2"):
        api.load("s", place.storage).activations(trial.number, 2)


@pytest.mark.slow
def test_grid_is_covered_once(finished):
    _, study = finished
    points = [(t.params["leak"], t.params["sub"], t.params["init_scale"]) for t in complete_trials(study)]
    assert sorted(points) == [(0.0, 0.0, 1.0), (0.0, 0.4, 1.0), (0.2, 0.0, 1.0), (0.2, 0.4, 1.0)]


@pytest.mark.slow
def test_heatmap_data_matches_the_trials(finished, tmp_path):
    _, study = finished
    trials = trials_frame(study)
    for metric, *_ in HEATMAP_METRICS:
        tables = heatmap_tables(trials, metric)
        assert list(tables) == [""]  # one panel: no other axis varies
        table = tables[""]
        assert list(table.index) == [0.0, 0.4] and list(table.columns) == [0.0, 0.2]
        for _, row in trials.iterrows():
            assert table.loc[row["sub"], row["leak"]] == pytest.approx(row[metric])
    paths = save_figures(study_figures(study), tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        [f"heatmap_{m}.png" for m, *_ in HEATMAP_METRICS] + ["seed_outcomes.png", "lesson_settings_seeds.png"])
    assert all(p.stat().st_size > 5000 for p in paths)


@pytest.mark.slow
def test_rerun_adds_nothing_and_a_larger_target_adds_the_difference(tmp_path):
    study = small_search(tmp_path, **BOOKKEEPING, n_trials=2)
    assert len(complete_trials(study)) == 2
    study = small_search(tmp_path, **BOOKKEEPING, n_trials=2)  # the same command again
    assert len(study.trials) == 2
    study = small_search(tmp_path, **BOOKKEEPING, n_trials=3)
    assert len(complete_trials(study)) == 3
    study = small_search(tmp_path, **BOOKKEEPING)  # default: the whole grid
    points = [(t.params["leak"], t.params["sub"]) for t in complete_trials(study)]
    assert len(points) == 4 and len(set(points)) == 4


@pytest.mark.slow
def test_a_failed_grid_point_is_retried(tmp_path):
    study = small_search(tmp_path, **BOOKKEEPING, n_trials=1)
    done = complete_trials(study)[0].params
    # A crashed worker leaves a FAIL trial at another grid point.
    study.enqueue_trial({"init_scale": 1.0, "leak": 0.2 if done["leak"] == 0 else 0.0, "sub": done["sub"]})
    trial = study.ask()
    trial.suggest_categorical("leak", [0.0, 0.2])
    study.tell(trial, state=TrialState.FAIL)
    study = small_search(tmp_path, **BOOKKEEPING)
    points = {(t.params["leak"], t.params["sub"]) for t in complete_trials(study)}
    assert len(complete_trials(study)) == 4 and len(points) == 4


def test_a_trial_killed_before_sampling_is_not_retried_as_an_empty_setting(tmp_path):
    study = small_search(tmp_path, **BOOKKEEPING, sampler="random", leak=Range(0, 0.3), n_trials=2)
    study.tell(study.ask(), state=TrialState.FAIL)  # killed between ask and the first suggest
    study = small_search(tmp_path, **BOOKKEEPING, sampler="random", leak=Range(0, 0.3), n_trials=3)
    complete = complete_trials(study)
    assert len(complete) == 3
    assert all(set(t.params) == set(SEARCHED) for t in complete)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


@pytest.mark.slow
def test_population_mode_stores_the_same_study_as_one_trial_at_a_time(finished, tmp_path):
    _, alone = finished
    study = small_search(tmp_path, population=3)
    trials = complete_trials(study)
    assert len(trials) == 4 and len({tuple(t.params.items()) for t in trials}) == 4
    by_point = {tuple(sorted(t.params.items())): t for t in complete_trials(alone)}
    for trial in trials:
        records = seed_records(trial)
        assert sorted(records) == [0, 1]
        before = seed_records(by_point[tuple(sorted(trial.params.items()))])
        for seed in (0, 1):  # float32 rounding of batched GEMMs apart, the same runs
            assert records[seed]["val_acc"] == pytest.approx(before[seed]["val_acc"], abs=0.01)
        assert trial.value == pytest.approx(statistics.fmean(r["val_acc"] for r in records.values()))
        assert len([k for k in trial.system_attrs if k.startswith("artifacts:")]) == 4  # history and picture per seed


@pytest.mark.slow
def test_population_search_from_the_command_line_prints_no_warnings(tmp_path):
    proc = run_cli("search", "--name", "p", *TINY, "--leak", "0.1,0.2", "--sub", "0.4", "--seeds", "0,1",
                   "--population", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/studies/p.db")
    assert len(complete_trials(study)) == 2


def test_population_auto_is_off_on_the_cpu_and_fills_32_models_on_cuda():
    assert MachineConfig(population="auto").population_size("cpu", 3) == 1
    assert MachineConfig(population="auto").population_size("cuda", 3) == 10
    assert MachineConfig(population="off").population_size("cuda", 3) == 1
    assert MachineConfig(population=5).population_size("cpu", 3) == 5


def test_population_mode_reuses_the_seeds_a_failed_trial_stored(tmp_path):
    place = StudyPlace("s", f"sqlite:///{tmp_path}/s.db")
    search = open_search(place, StudyDesign(leak=(0.1,), sub=(0.4,), seeds=(0, 1)), SMALL_RUN,
                         MachineConfig(population=2), progress=False)
    study = search.study
    study.enqueue_trial({"init_scale": 1.0, "leak": 0.1, "sub": 0.4})
    trial = study.ask()
    trial.suggest_categorical("leak", [0.1])
    record = {"val_acc": 0.5, "test_acc": 0.5, "diverged": False, "diverged_step": None, "steps": 1,
              "seconds": 0.1, "final_loss": 1.0, "layers": [{"mean": 0, "std": 1, "dead_frac": 0, "dead_units": 0,
                                                             "units": 32}]}
    trial.set_user_attr("seed_1", record)
    study.tell(trial, state=TrialState.FAIL)
    study = search.work()
    (complete,) = complete_trials(study)
    records = seed_records(complete)
    assert records[1]["reused_from"] == trial.number and records[1]["val_acc"] == 0.5
    assert records[0]["val_acc"] > 0.7 and "reused_from" not in records[0]


@pytest.mark.slow
def test_changed_configuration_is_refused_without_touching_the_database(finished):
    place, study = finished
    db = Path(place.storage_url().removeprefix("sqlite:///"))
    before = digest(db)
    grid = dict(storage=place.storage, leak=(0, 0.2), sub=(0, 0.4), seeds=(0, 1), progress=False)
    with pytest.raises(BadInput, match="space.lr: stored 0.05, asked 0.1"):
        api.search(place.name, **{**grid, **SMALL, "lr": 0.1})
    with pytest.raises(BadInput, match="space.sub: stored 0,0.4, asked 0,0.7"):
        api.search(place.name, **{**grid, **SMALL, "sub": (0, 0.7)})
    assert digest(db) == before


def test_diverged_settings_complete_with_chance_accuracy(tmp_path):
    study = small_search(tmp_path, leak=0.1, sub=0, init_scale=10, lr=5.0)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["n_diverged"] == 2 and trial.user_attrs["frac_trained"] == 0
    assert all(r["diverged"] for r in seed_records(trial).values())
    assert trial.value < 0.2


def test_stability_objective_is_a_pareto_study(tmp_path):
    study = small_search(tmp_path, **BOOKKEEPING, sampler="random", leak=Range(0, 0.3), n_trials=2,
                         objective="stability")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in complete_trials(study):
        assert trial.values == [trial.user_attrs["mean_val_acc"], trial.user_attrs["acc_std"]]
        assert 0 <= trial.params["leak"] <= 0.3
    assert study.best_trials


@pytest.mark.slow
def test_seed_frame_lists_every_seed(finished):
    _, study = finished
    seeds = seed_frame(study)
    assert len(seeds) == 8 and sorted(seeds["seed"].unique()) == [0, 1]


@pytest.mark.slow
def test_heatmaps_command_redraws_a_stored_study(finished, tmp_path):
    place, _ = finished
    proc = run_cli("heatmaps", "--name", place.name, "--storage", place.storage_url(), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    printed = sorted(proc.stdout.split())
    assert printed == sorted(str(tmp_path / f"{name}.png") for name in study_figures(finished[1]))
    assert all((tmp_path / path).stat().st_size > 5000 for path in printed)


@pytest.mark.slow
def test_load_existing_study_names_what_is_there(finished, tmp_path):
    place, _ = finished
    with pytest.raises(BadInput, match="no study 'nope'.*holds: s"):
        load_existing_study(StudyPlace(name="nope", storage=place.storage_url()))
    with pytest.raises(BadInput, match="no study database"):
        load_existing_study(StudyPlace(name="x", storage=f"sqlite:///{tmp_path}/none.db"))


# The command line's way of refusing, one case of each kind; every value's refusal is tested on the
# dataclasses themselves (tests/test_config.py).
SEARCH_BAD_INPUTS = [
    (["--sampler", "bayes"], "invalid choice: 'bayes'"),  # argparse's choices
    (["--leak", "0,1"], "--leak values must be in [0, 1)"),  # a FieldError, shown with its flag
    (["--seeds", "0,one"], "--seeds '0,one'"),  # a string that is not a value
    (["--heartbeat-seconds", "30", "--grace-seconds", "10"], "--grace-seconds (10) must exceed"),
    (["--storage", "nosuchdb://x/y"], "cannot open storage nosuchdb://x/y"),
    (["--name", "a/b"], "--name 'a/b'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", SEARCH_BAD_INPUTS, ids=[m for _, m in SEARCH_BAD_INPUTS])
def test_search_bad_input_is_one_line_exit_2_and_creates_nothing(flags, message, tmp_path):
    assert_one_line_error(run_cli("search", *flags, cwd=tmp_path), message)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_study_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(run_cli("search", "--storage", f"sqlite:///{blocker}/sub/x.db", cwd=tmp_path),
                          "cannot create")


def test_damaged_database_is_refused_and_left_as_it_was(tmp_path):
    db = tmp_path / "studies" / "quick.db"
    db.parent.mkdir()
    db.write_bytes(b"garbage, not sqlite" * 100)
    before = digest(db)
    assert_one_line_error(run_cli("search", "--model", "mlp", cwd=tmp_path), "not a readable SQLite database")
    assert digest(db) == before


@pytest.mark.slow
def test_warmup_is_an_axis_searched_like_the_others_and_each_trial_trains_as_train_does(tmp_path):
    proc = run_cli("search", "--name", "w", "--storage", f"sqlite:///{tmp_path}/w.db", *TINY, "--leak", "0.1",
                   "--sub", "0.4", "--lr", "0.5", "--warmup-steps", "0,5", "--seeds", "0", "--max-steps", "8",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = load_existing_study(StudyPlace("w", f"sqlite:///{tmp_path}/w.db"))
    trials = complete_trials(study)
    assert sorted(t.params["warmup_steps"] for t in trials) == [0, 5]
    for trial in trials:
        config = RunConfig(model=ModelConfig(model="mlp", widths=(16,), leak=0.1, sub=0.4),
                           optim=OptimConfig(lr=0.5, warmup_steps=trial.params["warmup_steps"]),
                           train=TrainConfig(max_steps=8, stats_every=10))
        assert seed_records(trial)[0]["final_loss"] == api.train(**config_kwargs(config)).losses[-1]
    assert {"warmup_steps"} <= set(trials_frame(study).columns)


def config_kwargs(config: RunConfig) -> dict:
    return {k: v for part in (config.model, config.optim, config.train) for k, v in vars(part).items()}


@pytest.mark.slow
def test_a_seed_reused_without_its_picture_counts_and_says_the_picture_is_missing(tmp_path, monkeypatch):
    """A setting retried where the artifact store lacks the failed trial's pictures (another machine's
    store, or removed): the seed is reused all the same and the trial completes."""
    from study.runner import Search

    original = Search._store_seed

    def store_then_stop(self, *args):
        original(self, *args)
        raise KeyboardInterrupt  # after the first seed and its picture are stored

    monkeypatch.setattr(Search, "_store_seed", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        small_search(tmp_path, leak=(0.1,), sub=(0.4,), **BOOKKEEPING)
    monkeypatch.undo()
    artifacts = tmp_path / "s" / "artifacts"
    assert any(artifacts.iterdir())
    shutil.rmtree(artifacts)
    study = small_search(tmp_path, leak=(0.1,), sub=(0.4,), **BOOKKEEPING)
    (trial,) = complete_trials(study)
    records = seed_records(trial)
    reused = [seed for seed, r in records.items() if "reused_from" in r]
    assert len(reused) == 1 and records[reused[0]]["picture_missing"] is True
    assert all("picture_missing" not in r for seed, r in records.items() if seed not in reused)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["csv", "json"])
def test_export_writes_the_tables_of_every_seed_and_every_setting(finished, tmp_path, form):
    place, study = finished
    proc = run_cli("export", "--name", place.name, "--storage", place.storage, "--format", form,
                   "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / f"seeds.{form}"), str(tmp_path / f"settings.{form}")]
    read = pd.read_csv if form == "csv" else (lambda path: pd.read_json(path, orient="records"))
    seeds, expected = read(tmp_path / f"seeds.{form}"), seed_frame(study)
    assert list(seeds.columns) == list(expected.columns) and len(seeds) == len(expected) == 8
    assert list(seeds["val_acc"]) == pytest.approx(list(expected["val_acc"]))
    assert list(seeds["trained"]) == list(expected["trained"])
    settings = read(tmp_path / f"settings.{form}")
    assert list(settings["mean_val_acc"]) == pytest.approx(list(trials_frame(study)["mean_val_acc"]))
    assert_one_line_error(run_cli("export", "--name", place.name, "--storage", place.storage, "--format", "xls",
                                  cwd=tmp_path), "invalid choice: 'xls'")
