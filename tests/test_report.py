"""The report on small studies built here: its numbers are the trials' numbers, its intervals widen
with fewer seeds, and it says what happened to a setting whose every seed diverged."""

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from conftest import run_cli
import study
from study.plots import study_figures
from study.report import findings, setting_table, write_report
from study.records import seed_records, trial_layers

SMALL = dict(model="mlp", widths=(16,), lr=0.05)


def run_study(tmp_path, name, **settings):
    return study.search(name, storage=f"sqlite:///{tmp_path}/{name}.db", progress=False, **{**SMALL, **settings}).optuna


@pytest.fixture(scope="module")
def lesson_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def lesson_study(lesson_dir):
    """Two of the lesson's settings and plain ReLU, four seeds each, in <lesson_dir>/lesson.db."""
    return run_study(lesson_dir, "lesson", leak=(0, 0.1), sub=(0, 0.4), seeds=(0, 1, 2, 3))


def test_table_numbers_are_the_trials_numbers(lesson_study):
    table = setting_table(lesson_study)
    assert len(table) == 4
    for trial in lesson_study.trials:
        accs = [r["val_acc"] for r in seed_records(trial).values()]
        row = table[(table["leak"] == trial.params["leak"]) & (table["sub"] == trial.params["sub"])].iloc[0]
        assert row["n_seeds"] == 4
        assert row["mean"] == pytest.approx(statistics.fmean(accs))
        assert row["std"] == pytest.approx(statistics.stdev(accs))
        assert row["worst"] == min(accs)
        half = scipy_stats.t.ppf(0.975, 3) * statistics.stdev(accs) / 2
        assert row["ci_low"] == pytest.approx(max(statistics.fmean(accs) - half, 0))
        assert row["near_zero_last"] == pytest.approx(trial_layers(trial)[-1]["near_zero_frac"])


def test_interval_widens_with_fewer_seeds(tmp_path):
    many = setting_table(run_study(tmp_path, "many", leak=0.1, sub=0.4, seeds=(0, 1, 2, 3, 4, 5)))
    few = setting_table(run_study(tmp_path, "few", leak=0.1, sub=0.4, seeds=(0, 1, 2)))
    assert few["ci_high"][0] - few["ci_low"][0] > many["ci_high"][0] - many["ci_low"][0]
    one = setting_table(run_study(tmp_path, "one", leak=0.1, sub=0.4, seeds=0))
    assert math.isnan(one["ci_low"][0])
    assert any("no interval" in s for s in findings(one, 0.5))


def test_all_seeds_diverged_is_reported_as_collapse(tmp_path):
    boom = run_study(tmp_path, "boom", leak=0.05, sub=0.9, init_scale=10, seeds=(0, 1), lr=5.0)
    table = setting_table(boom)
    assert table["n_trained"][0] == 0 and table["n_diverged"][0] == 2
    sentences = findings(table, 0.5)
    assert any(s.startswith("(0.05, 0.9) x10 collapses: none of 2 seeds trained") and "2 diverged" in s
               for s in sentences)
    assert any("1 of 1 settings trained for no seed" in s for s in sentences)


def test_report_sentences_carry_their_evidence(lesson_study):
    table = setting_table(lesson_study)
    sentences = findings(table, 0.5)
    named = [s for s in sentences if s.startswith(("(0, 0)", "(0.1, 0.4)"))]
    assert len(named) == 2
    for sentence in named:
        assert "of 4 seeds" in sentence or "all 4 seeds" in sentence
    assert any(s.startswith("Only 4 seeds per setting") for s in sentences)
    best = [s for s in sentences if s.startswith("Best mean")]
    assert len(best) == 1 and ("overlap" in best[0])


def test_report_file_embeds_its_pictures(lesson_study, tmp_path):
    path = write_report(lesson_study, tmp_path)
    text = path.read_text()
    assert "## The lesson's settings" in text and "| (0.1, 0.4) | 4 |" in text
    embedded = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert sorted(embedded) == sorted(f"{name}.png" for name in study_figures(lesson_study))
    assert len(embedded) == 6  # five heatmaps and the lesson settings' strip
    assert all((tmp_path / picture).stat().st_size > 5000 for picture in embedded)


def test_report_command(lesson_study, lesson_dir, tmp_path):
    proc = run_cli("report", "--name", "lesson", "--storage", f"sqlite:///{lesson_dir}/lesson.db", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == write_report(lesson_study, tmp_path / "again").read_text()
