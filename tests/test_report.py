"""The report on small studies built here: its numbers are the trials' numbers, its intervals widen
with fewer seeds, and it says what happened to a setting whose every seed diverged."""

import math
import statistics

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from conftest import run_cli
import study
from study.plots import study_figures
from study.reliability import fisher_exact, holm, seeds_for_power
from study.report import comparisons, findings, setting_table, write_report
from study.results import seed_frame
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


@pytest.mark.slow
def test_table_numbers_are_the_trials_numbers(lesson_study):
    table = setting_table(lesson_study)
    assert len(table) == 4
    for trial in lesson_study.trials:
        accs = [r["val_acc"] for r in seed_records(trial).values()]
        trained = [a for a in accs if a > 0.5]
        row = table[(table["leak"] == trial.params["leak"]) & (table["sub"] == trial.params["sub"])].iloc[0]
        assert (row["n_seeds"], row["n_trained"]) == (4, len(trained))
        exact = scipy_stats.binomtest(len(trained), 4).proportion_ci(method="exact")
        assert (row["trained_low"], row["trained_high"]) == pytest.approx((exact.low, exact.high))
        assert row["trained_mean"] == pytest.approx(statistics.fmean(trained))
        half = scipy_stats.t.ppf(0.975, len(trained) - 1) * statistics.stdev(trained) / math.sqrt(len(trained))
        assert row["trained_acc_low"] == pytest.approx(statistics.fmean(trained) - half)
        assert row["mean"] == pytest.approx(statistics.fmean(accs)) and row["worst"] == min(accs)
        assert row["near_zero_last"] == pytest.approx(trial_layers(trial)[-1]["near_zero_frac"])


@pytest.mark.slow
def test_the_exact_interval_widens_with_fewer_seeds(tmp_path):
    many = setting_table(run_study(tmp_path, "many", leak=0.1, sub=0.4, seeds=(0, 1, 2, 3, 4, 5)))
    few = setting_table(run_study(tmp_path, "few", leak=0.1, sub=0.4, seeds=(0, 1, 2)))
    assert (many["n_trained"][0], few["n_trained"][0]) == (6, 3)
    assert few["trained_low"][0] < many["trained_low"][0] and few["trained_high"][0] == many["trained_high"][0] == 1
    one = run_study(tmp_path, "one", leak=0.1, sub=0.4, seeds=0)
    table = setting_table(one)
    assert math.isnan(table["trained_acc_low"][0])  # no t-interval from one seed
    assert any("(one seed)" in s for s in findings(table, seed_frame(one), 0.5))


def test_all_seeds_diverged_is_reported_with_when(tmp_path):
    boom = run_study(tmp_path, "boom", leak=0.05, sub=0.9, init_scale=10, seeds=(0, 1), lr=5.0)
    table, seeds = setting_table(boom), seed_frame(boom)
    assert table["n_trained"][0] == 0 and table["n_diverged"][0] == 2
    sentences = findings(table, seeds, 0.5)
    assert any(s.startswith("(0.05, 0.9) x10: 0 of 2 seeds trained") and "2 diverged (median step" in s
               for s in sentences)
    steps = seeds["diverged_step"]
    assert any(f"2 of them diverged, at steps {steps.min():.0f} to {steps.max():.0f}" in s for s in sentences)
    assert any("1 of 1 settings trained for no seed" in s for s in sentences)


def synthetic(outcomes: dict[tuple, list[bool]]) -> tuple:
    """A setting table and seed frame from (leak, sub) -> trained per seed 0, 1, ... (no training)."""
    from study.axes import AXES, NAMES as SEARCHED

    defaults = {axis.name: axis.default for axis in AXES}
    rows = [{**defaults, "leak": leak, "sub": sub, "seed": seed,
             "val_acc": 0.8 + 0.001 * seed if ok else 0.1, "diverged": not ok, "diverged_step": 3.0 if not ok else None}
            for (leak, sub), trained in outcomes.items() for seed, ok in enumerate(trained)]
    seeds = pd.DataFrame(rows)
    table = pd.DataFrame([{**dict(zip(SEARCHED, key)), "n_seeds": len(g), "n_trained": int((g["val_acc"] > 0.5).sum()),
                           "trained_mean": g["val_acc"][g["val_acc"] > 0.5].mean()}
                          for key, g in seeds.groupby(list(SEARCHED))])
    return table, seeds


def test_comparisons_are_paired_on_shared_seeds_and_holm_corrected():
    table, seeds = synthetic({(0.0, 0.0): [True] * 10, (0.1, 0.4): [True] * 7 + [False] * 3,
                              (0.05, 0.9): [False] * 10})
    compared = comparisons(table, seeds, 0.5).set_index("setting")
    assert compared.loc["(0.05, 0.9)", "p"] == pytest.approx(2 * 0.5 ** 10)  # 10 discordant seeds, all one way
    assert compared.loc["(0.1, 0.4)", "p"] == pytest.approx(0.25)  # 3 discordant: 2 x 0.5^3
    assert list(compared["p_holm"]) == pytest.approx(holm(list(compared["p"])))
    assert compared.loc["(0.05, 0.9)", "verdict"] == "less reliable"
    assert compared.loc["(0.1, 0.4)", "verdict"] == "cannot be told apart"
    assert compared.loc["(0.1, 0.4)", "seeds_for_power"] == seeds_for_power(0.7, 1.0)
    assert set(compared["test"]) == {"McNemar exact, 10 shared seeds"}


def test_settings_without_shared_seeds_are_compared_with_fishers_test():
    table, seeds = synthetic({(0.0, 0.0): [True] * 10, (0.1, 0.4): [True] * 2 + [False] * 8})
    seeds.loc[seeds["leak"] == 0.1, "seed"] += 100  # other seeds
    (row,) = comparisons(table, seeds, 0.5).to_dict("records")
    assert row["test"] == "Fisher exact" and row["p"] == pytest.approx(fisher_exact(2, 10, 10, 10))


@pytest.mark.slow
def test_report_sentences_carry_their_evidence(lesson_study):
    table, seeds = setting_table(lesson_study), seed_frame(lesson_study)
    sentences = findings(table, seeds, 0.5)
    named = [s for s in sentences if s.startswith(("(0, 0)", "(0.1, 0.4)"))]
    assert len(named) == 2 and all("of 4 seeds trained" in s and "exact 95% CI" in s for s in named)
    assert any(s.startswith("Most reliable:") for s in sentences)
    assert any("cannot be told apart" in s.lower() and "McNemar" in s for s in sentences)
    assert not any("t-interval" in s and "all seeds" in s for s in sentences)


@pytest.mark.slow
def test_report_file_embeds_its_pictures(lesson_study, tmp_path):
    path = write_report(lesson_study, tmp_path)
    text = path.read_text()
    assert "## The lesson's settings" in text and "| (0.1, 0.4) | " in text and "## Each setting against" in text
    embedded = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert sorted(embedded) == sorted(f"{name}.png" for name in study_figures(lesson_study))
    assert len(embedded) == 7  # five heatmaps, the seeds' outcomes and the lesson settings' strip
    assert all((tmp_path / picture).stat().st_size > 5000 for picture in embedded)


@pytest.mark.slow
def test_report_command(lesson_study, lesson_dir, tmp_path):
    proc = run_cli("report", "--name", "lesson", "--storage", f"sqlite:///{lesson_dir}/lesson.db", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert report == write_report(lesson_study, tmp_path / "again").read_text()
    assert "| divergence | loss is not finite or above 40x its first loss |" in report
