"""A study's whole design is stored and compared on resume, and studies written by 0.1.0 still open.

tests/fixtures/study-0.1.0.db was made by initstudy 0.1.0 (2026-11-25):
    python -m study search --name v010 --model mlp --widths 16 --lr 0.05 --stats-every 10
        --leak 0,0.1,0.2 --sub 0 --seeds 0,1 --n-trials 2 --storage sqlite:///v010.db
(then checkpointed into one file). 0.1.0 compared a hand-picked part of the configuration, so a
study could mix trials trained for 2 steps with trials trained for 40 without a word.
"""

import json
import shutil
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, TINY, assert_one_line_error, run_cli
from study.config import ModelConfig, RunConfig, TrainConfig
from study import axes
from study.design import CONFIG_ATTR, StudyDesign, fixed_axis_values, study_config, upgrade_stored_config
from study.results import trials_frame
from test_storage import tree_digest

FIXTURE = ROOT / "tests" / "fixtures" / "study-0.1.0.db"
V010 = ["--name", "v010", "--model", "mlp", "--widths", "16", "--lr", "0.05", "--stats-every", "10",
        "--leak", "0,0.1,0.2", "--sub", "0", "--seeds", "0,1"]
# Since 0.4.0 biases start as PyTorch's (the lesson's) unless asked, and since 0.6.0 divergence is
# relative to the first loss: a 0.1.0 study's zero biases and absolute rule are asked for by name to
# continue it with `search` (`work` reads them from the study).
V010_TODAY = [*V010, "--bias-init", "zero", "--diverge-factor", "off", "--diverge-loss", "100"]
GRID = ["--leak", "0,0.2", "--sub", "0", "--seeds", "0"]


def leaves(config: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        keys |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_the_0_1_0_configuration_reads_as_todays():
    with sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True) as conn:
        (stored,) = conn.execute("SELECT value_json FROM study_user_attributes WHERE key = ?",
                                 (CONFIG_ATTR,)).fetchone()
    stored = json.loads(stored)
    assert "train" not in stored  # the old layout
    design = StudyDesign(leak=(0, 0.1, 0.2), sub=0, lr=0.05, momentum=0.85, seeds=(0, 1), n_trials=2)
    run = RunConfig(model=ModelConfig(model="mlp", widths=(16,), bias_init="zero"),
                    train=TrainConfig(stats_every=10, diverge_factor=None, diverge_loss=100))
    today = study_config(design, run)
    upgraded = upgrade_stored_config(stored)
    assert {k: v for k, v in upgraded.items() if k != "code_version"} == \
        {k: v for k, v in today.items() if k != "code_version"}


@pytest.mark.slow
def test_a_study_written_by_0_1_0_resumes_and_plots(tmp_path):
    (tmp_path / "studies").mkdir()
    db = tmp_path / "studies" / "v010.db"
    shutil.copy(FIXTURE, db)
    old = {t.number: (t.values, t.user_attrs) for t in optuna.load_study(study_name="v010",
                                                                          storage=f"sqlite:///{db}").trials}
    before = tree_digest(tmp_path / "studies")
    assert_one_line_error(run_cli("search", *V010, "--n-trials", "3", cwd=tmp_path),
                          "model.bias_init: stored zero, asked default; train.diverge_factor: stored None, asked 40.0")
    assert tree_digest(tmp_path / "studies") == before
    proc = run_cli("search", *V010_TODAY, "--n-trials", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="v010", storage=f"sqlite:///{db}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and len({t.params["leak"] for t in complete}) == 3
    for trial in study.trials:
        if trial.number in old:
            assert (trial.values, trial.user_attrs) == old[trial.number]  # kept as they were
    # 0.1.0 called the near-zero fraction `dead_frac`; old and new trials read alike.
    frame = trials_frame(study).set_index("number")
    for trial in complete:
        stored = trial.user_attrs["layers"][-1]
        assert frame.loc[trial.number, "near_zero_last"] == stored.get("near_zero_frac", stored.get("dead_frac"))
    assert {"dead_frac" in t.user_attrs["layers"][-1] for t in complete} == {True, False}
    for command in ("heatmaps", "report"):
        proc = run_cli(command, "--name", "v010", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "studies" / "v010" / "heatmap_frac_trained.png").stat().st_size > 0
    # The report shows the stored configuration in today's layout.
    report = (tmp_path / "studies" / "v010" / "report.md").read_text()
    assert "| train | `{'backend': 'torch', 'dtype': 'float32', 'max_steps': None, 'stats_every': 10" in report
    assert ("| divergence | loss is not finite or above 100 (stored by initstudy 0.1.0: before 0.6.0 the limit was "
            "absolute") in report


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    home = tmp_path_factory.mktemp("design")
    proc = run_cli("search", "--name", "design", *TINY, *GRID, "--max-steps", "3", cwd=home)
    assert proc.returncode == 0, proc.stderr
    return home


# Every field of the stored design, each changed on its own: (flags, the field the refusal names).
CHANGES = [
    (["--leak", "0,0.1"], "space.leak"), (["--sub", "0,0.4"], "space.sub"),
    (["--init-scale", "2"], "space.init_scale"), (["--sampler", "random"], "sampler"),
    (["--objective", "stability"], "objective"), (["--seeds", "0,1"], "seeds"),
    (["--train-threshold", "0.6"], "train_threshold"),
    (["--model", "cnn"], "model.model"), (["--widths", "8"], "model.widths"), (["--maxv", "3"], "model.maxv"),
    (["--init", "lsuv"], "model.init"), (["--bias-init", "zero"], "model.bias_init"),
    (["--lr", "0.1"], "space.lr"), (["--momentum", "0.5"], "space.momentum"),
    (["--warmup-steps", "5"], "space.warmup_steps"),
    (["--weight-decay", "0.01"], "optim.weight_decay"), (["--schedule", "onecycle"], "optim.schedule"),
    (["--batch-size", "512"], "optim.batch_size"), (["--epochs", "2"], "optim.epochs"),
    (["--n-val", "5000"], "data.n_val"), (["--split-seed", "1"], "data.split_seed"),
    (["--backend", "triton"], "train.backend"), (["--dtype", "float64"], "train.dtype"),
    (["--max-steps", "40"], "train.max_steps"), (["--stats-every", "5"], "train.stats_every"),
    (["--diverge-loss", "50"], "train.diverge_loss"), (["--diverge-factor", "20"], "train.diverge_factor"),
]


def test_every_stored_field_has_a_change_below():
    design = study_config(StudyDesign(), RunConfig())
    assert {field for _, field in CHANGES} == leaves(design) - {"code_version"}


@pytest.mark.slow
@pytest.mark.parametrize("flags, field", CHANGES, ids=[field for _, field in CHANGES])
def test_a_change_to_any_design_field_is_refused_and_nothing_is_touched(stored, flags, field):
    before = tree_digest(stored / "studies")
    proc = run_cli("search", "--name", "design", *TINY, *GRID, "--max-steps", "3", *flags, cwd=stored)
    assert_one_line_error(proc, f"{field}: stored ")
    assert tree_digest(stored / "studies") == before


@pytest.mark.slow
def test_a_machine_with_the_data_at_another_path_continues_the_study(stored, data_copy):
    """The data directory is where a machine keeps its files, not part of the design."""
    before = [(t.number, t.state, t.user_attrs) for t in optuna.load_study(
        study_name="design", storage=f"sqlite:///{stored}/studies/design.db").trials]
    proc = run_cli("search", "--name", "design", *TINY, *GRID, "--max-steps", "3", "--data-dir", str(data_copy),
                   cwd=stored)
    assert proc.returncode == 0, proc.stderr
    after = optuna.load_study(study_name="design", storage=f"sqlite:///{stored}/studies/design.db").trials
    assert [(t.number, t.state, t.user_attrs) for t in after] == before  # nothing trained again


def test_a_data_directory_stored_by_an_earlier_version_is_not_compared():
    today = study_config(StudyDesign(seeds=(0, 1)), RunConfig())
    stored = json.loads(json.dumps(today))
    stored["data"]["data_dir"] = "/mnt/elsewhere/fmnist"  # as 0.4.0 and earlier stored it
    assert "data_dir" not in today["data"]
    assert upgrade_stored_config(stored) == today


def test_a_0_2_0_configuration_reads_lr_and_momentum_as_one_value_axes():
    """0.2.0 stored lr and momentum in `optim` and searched three axes; today they are axes."""
    design = StudyDesign(leak=(0, 0.1), sub=0, lr=0.05, momentum=0.9, seeds=(0, 1))
    today = study_config(design, RunConfig(model=ModelConfig(model="mlp", widths=(16,))))
    stored = json.loads(json.dumps(today))
    stored["optim"] |= {"lr": 0.05, "momentum": 0.9}
    for name in ("lr", "momentum"):
        del stored["space"][name]
    assert upgrade_stored_config(stored) == today
    assert fixed_axis_values(stored) == {"init_scale": 1.0, "sub": 0.0, "lr": 0.05, "momentum": 0.9,
                                         "warmup_steps": 0.0}


@pytest.mark.parametrize("axis", [a for a in axes.AXES if a.stored_before is not None], ids=lambda a: a.name)
def test_an_axis_added_later_reads_in_older_studies_as_the_value_they_ran_at(axis):
    today = study_config(StudyDesign(seeds=(0, 1)), RunConfig())
    stored = json.loads(json.dumps(today))
    del stored["space"][axis.name]
    assert upgrade_stored_config(stored) == today
    assert fixed_axis_values(stored)[axis.name] == axis.stored_before


def test_a_study_stored_before_0_6_0_keeps_its_absolute_divergence_rule():
    today = study_config(StudyDesign(seeds=(0, 1)), RunConfig(train=TrainConfig(diverge_factor=None, diverge_loss=100)))
    stored = json.loads(json.dumps(today))
    del stored["train"]["diverge_factor"]  # as 0.5.0 and earlier stored it
    assert upgrade_stored_config(stored) == today
    assert upgrade_stored_config(stored)["train"]["diverge_factor"] is None != RunConfig().train.diverge_factor
