"""A dynamics study's summary per setting and rate, on made-up seeds: counts with exact intervals,
and the peak ratio of failed against trained seeds with its exact rank test."""

import pandas as pd
import pytest
from scipy import stats

from study import axes
from study.dynamics_tables import OUTCOMES, outcome_summary
from study.reliability import clopper_pearson


def seeds(lr, outcomes_and_peaks):
    setting = {name: 0.0 for name in axes.NAMES} | {"init_scale": 1.0, "momentum": 0.85, "lr": lr}
    return [{**setting, "seed": seed, "outcome": outcome, "diverged_step": None, "val_acc": 0.8, "peak_ratio": peak,
             "peak_step": 2} for seed, (outcome, peak) in enumerate(outcomes_and_peaks)]


def test_each_setting_and_rate_counts_its_outcomes_and_tests_the_peak_ratio():
    mixed = [("trained", 1.2), ("catapult", 2.5), ("trained", 1.1), ("diverged", 6.0), ("stalled", 4.0),
             ("diverged", 5.5)]
    frame = pd.DataFrame(seeds(0.2, mixed) + seeds(0.1, [("trained", 0.8)] * 3))
    table = outcome_summary(frame).set_index("lr")
    low, high = clopper_pearson(2, 6)
    assert table.loc[0.2, "diverged"] == f"2/6 ({low:.2f}-{high:.2f})" and table.loc[0.2, "n"] == 6
    assert [table.loc[0.2, outcome].split(" ")[0] for outcome in OUTCOMES] == ["2/6", "1/6", "2/6", "1/6"]
    assert table.loc[0.2, "peak_ratio_failed"] == 5.5 and table.loc[0.2, "peak_ratio_trained"] == 1.2
    exact = stats.mannwhitneyu([6.0, 4.0, 5.5], [1.2, 2.5, 1.1], method="exact").pvalue
    assert table.loc[0.2, "peak_ratio_p"] == pytest.approx(exact)  # 0.1: three against three cannot go lower
    assert pd.isna(table.loc[0.1, "peak_ratio_p"]) and table.loc[0.1, "trained"].startswith("3/3")
