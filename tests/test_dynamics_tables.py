"""A dynamics study's summary per setting and rate, on made-up seeds: counts with exact intervals,
and the peak ratio of diverged against trained seeds over their common first steps."""

import pandas as pd
import pytest
from scipy import stats

from study import axes
from study.dynamics_tables import OUTCOMES, outcome_summary
from study.reliability import clopper_pearson

SETTING = {name: 0.0 for name in axes.NAMES} | {"init_scale": 1.0, "momentum": 0.85}


def frames(lr, seeds):
    """seeds: (outcome, ratios along the measured steps, converged flags or None for all)."""
    outcomes, steps = [], []
    for seed, (outcome, ratios, converged) in enumerate(seeds):
        outcomes.append({**SETTING, "lr": lr, "seed": seed, "outcome": outcome})
        steps += [{**SETTING, "lr": lr, "seed": seed, "step": step, "ratio": ratio,
                   "converged": True if converged is None else converged[step]} for step, ratio in enumerate(ratios)]
    return pd.DataFrame(outcomes), pd.DataFrame(steps)


def test_each_setting_and_rate_counts_its_outcomes_and_compares_peaks_over_the_common_steps():
    seeds = [("trained", [1.0, 1.2, 1.1], None), ("catapult", [1.5, 2.5, 0.9], None), ("trained", [1.1, 0.9, 0.8], None),
             ("diverged", [3.0, 6.0, 90.0], None), ("stalled", [2.0, 4.0, 1.0], None),
             ("diverged", [2.5, 5.5], None),  # measured for two steps only: the common steps are 0 and 1
             ("diverged", [4.0, 50.0, 70.0], [True, False, True])]  # its step-1 value did not converge
    outcomes, steps = frames(0.2, seeds)
    more_outcomes, more_steps = frames(0.1, [("trained", [0.8, 0.7], None)] * 3)
    table = outcome_summary(pd.concat([outcomes, more_outcomes]), pd.concat([steps, more_steps])).set_index("lr")
    low, high = clopper_pearson(3, 7)
    assert table.loc[0.2, "diverged"] == f"3/7 ({low:.2f}-{high:.2f})" and table.loc[0.2, "n"] == 7
    assert [table.loc[0.2, outcome].split(" ")[0] for outcome in OUTCOMES] == ["2/7", "1/7", "3/7", "1/7"]
    assert table.loc[0.2, "common_steps"] == 2
    diverged, trained = [6.0, 5.5, 4.0], [1.2, 2.5, 1.1]  # peaks over steps 0-1, converged values only
    assert table.loc[0.2, "peak_ratio_diverged"] == 5.5 and table.loc[0.2, "peak_ratio_trained"] == 1.2
    exact = stats.mannwhitneyu(diverged, trained, method="exact").pvalue
    assert table.loc[0.2, "peak_ratio_p"] == pytest.approx(exact)  # 0.1: three against three cannot go lower
    assert pd.isna(table.loc[0.1, "peak_ratio_p"]) and table.loc[0.1, "trained"].startswith("3/3")
