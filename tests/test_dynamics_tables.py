"""A dynamics study's summary per setting and rate, on made-up seeds: counts with exact intervals,
and the peak ratio of diverged against trained seeds over their common first steps."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study import axes
from study.dynamics_tables import OUTCOMES, before_spike, outcome_summary, ratio_by_step
from study.reliability import clopper_pearson

SETTING = {name: 0.0 for name in axes.NAMES} | {"init_scale": 1.0, "momentum": 0.85}


def frames(lr, seeds, losses=None):
    """seeds: (outcome, ratios along the measured steps, converged flags or None for all); losses:
    per seed along the steps (default 1 at every step: no spike)."""
    outcomes, steps = [], []
    for seed, (outcome, ratios, converged) in enumerate(seeds):
        outcomes.append({**SETTING, "lr": lr, "seed": seed, "outcome": outcome})
        loss = losses[seed] if losses else [1.0] * len(ratios)
        steps += [{**SETTING, "lr": lr, "seed": seed, "step": step, "ratio": ratio, "loss": loss[step],
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


def test_by_step_the_pooled_test_finds_the_step_from_which_diverged_runs_peak_higher():
    """Two rates (strata) of the same seeds: until step 1 the groups' ratios interleave, from step 2
    every diverged run has peaked above every trained one; a third rate with trained runs only takes
    no part."""
    rng = np.random.default_rng(1)
    parts = []
    for lr in (0.2, 0.3):
        seeds = [("trained", [1.0 + rng.random(), 1.0 + rng.random(), 1.5, 1.4], None) for _ in range(6)]
        seeds += [("diverged", [1.0 + rng.random(), 1.0 + rng.random(), 5.0, 4.0], None) for _ in range(5)]
        parts.append(frames(lr, seeds))
    parts.append(frames(0.1, [("trained", [0.5, 0.5, 0.5, 0.5], None)] * 3))
    outcomes, steps = (pd.concat(frame) for frame in zip(*parts))
    table = ratio_by_step(outcomes, steps, draws=1999).set_index("step")
    assert list(table.index) == [0, 1, 2, 3] and (table["strata"] == 2).all()
    assert (table["diverged"] == 10).all() and (table["trained"] == 12).all()
    assert (table.loc[[2, 3], "auc"] == 1.0).all() and (table.loc[[2, 3], "p_holm"] < 0.05).all()
    # One permutation of the seeds for both strata: the same 11 seeds are one piece of evidence, so p
    # is that of one stratum, 2 / C(11, 5) two-sided, not of two independent ones.
    assert table.loc[2, "p"] == pytest.approx(2 / math.comb(11, 5), abs=0.004)
    # Step 0 against scipy's Mann-Whitney within each stratum: the pooled AUC is their mean.
    aucs = []
    for lr in (0.2, 0.3):
        first = steps[(steps["lr"] == lr) & (steps["step"] == 0)].merge(outcomes)
        diverged = first[first["outcome"] == "diverged"]["ratio"]
        trained = first[first["outcome"] == "trained"]["ratio"]
        aucs.append(stats.mannwhitneyu(diverged, trained).statistic / (len(diverged) * len(trained)))
    assert table.loc[0, "auc"] == pytest.approx(np.mean(aucs))


def test_by_step_a_run_counts_only_its_steps_before_its_loss_spiked():
    """The diverged runs' ratios are the lowest until their loss passes twice its start, where they
    blow up: the blow-up never counts, so they stay below the trained runs at every step."""
    seeds = [("trained", [2.0, 2.1, 2.2], None), ("trained", [2.5, 2.4, 2.6], None),
             ("diverged", [1.0, 1.1, 50.0], None), ("diverged", [1.2, 40.0, 60.0], None)]
    losses = [[1.0, 0.9, 0.8], [1.0, 1.1, 0.9], [1.0, 1.5, 2.5], [1.0, 3.0, 9.0]]
    outcomes, steps = frames(0.2, seeds, losses)
    assert set(map(tuple, before_spike(steps)[["seed", "step"]].to_numpy())) == {
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0)}
    table = ratio_by_step(outcomes, steps, draws=999)
    assert list(table["step"]) == [0, 1, 2] and (table["auc"] == 0.0).all()


def test_one_diverged_seed_is_compared_exactly_with_the_trained_ones():
    """With one seed in a group every assignment is counted: the highest of five is so in 2 of 5
    (two-sided: the highest or the lowest)."""
    seeds = [("trained", [1.0 + i / 10], None) for i in range(4)] + [("diverged", [3.0], None)]
    table = outcome_summary(*frames(0.2, seeds))
    assert table["peak_ratio_p"].iloc[0] == pytest.approx(2 / 5)
