"""The edge's law across momentum or init scale, on outcomes drawn from known curves: the exponent
and its interval, the test of the law against free curves, the test of a shared exponent."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special

from study.edge_law import fit_law, same_curve_p, same_exponent_p
from study.results import LAW_COLUMNS, law_table

MOMENTA = (0.0, 0.5, 0.85, 0.9)


def draw(rng, exponent, lr90_at_1=0.3, slope=-6.0, bases=tuple(1 - m for m in MOMENTA), seeds=8, spread=0.7,
         lr90_of=None):
    """Per-seed (lr, trained, base): five rates around each level's lr90 on a logistic curve in log lr;
    lr90 = lr90_at_1 * base^exponent unless `lr90_of(base)` says otherwise."""
    lrs, trained, levels = [], [], []
    for base in bases:
        lr90 = lr90_of(base) if lr90_of else lr90_at_1 * base ** exponent
        for log_lr in math.log(lr90) + np.linspace(-spread, spread, 5):
            p = special.expit(special.logit(0.9) + slope * (log_lr - math.log(lr90)))
            lrs += [math.exp(log_lr)] * seeds
            trained += list(rng.random(seeds) < p)
            levels += [base] * seeds
    return lrs, trained, levels


def test_the_exponent_is_recovered_with_an_interval_around_it():
    law = fit_law(*draw(np.random.default_rng(1), exponent=0.5, seeds=40), fit_draws=0)
    assert law.levels == 4 and law.n == 4 * 5 * 40 and law.link in ("logit", "probit")
    assert law.exponent_low < 0.5 < law.exponent_high and abs(law.exponent - 0.5) < 0.1
    assert law.exponent_high - law.exponent_low < 0.3
    assert math.isnan(law.fit_p)  # not asked for


@pytest.mark.slow
def test_the_exponents_interval_covers_the_true_one_at_least_93_percent_of_the_time():
    rng = np.random.default_rng(2026)
    laws = [fit_law(*draw(rng, exponent=0.5), fit_draws=0) for _ in range(40)]
    covered = sum(law.exponent_low <= 0.5 <= law.exponent_high for law in laws)
    assert covered >= 38  # 0.95 of 40


def test_the_fit_test_rejects_levels_that_follow_no_power_law_and_not_those_that_do():
    # lr90 rises from base 1 to 0.5, then falls tenfold at 0.15: no single exponent describes it.
    shape = {1.0: 0.3, 0.5: 0.6, 0.15: 0.06, 0.1: 0.6}
    broken = fit_law(*draw(np.random.default_rng(3), exponent=0.0, bases=tuple(shape), lr90_of=shape.get),
                     fit_draws=49)
    assert broken.fit_p == 1 / 50  # every draw from the fitted law fits it better
    assert fit_law(*draw(np.random.default_rng(3), exponent=0.5), fit_draws=49).fit_p > 0.05


def test_a_shared_exponent_is_rejected_only_where_the_exponents_differ():
    rng = np.random.default_rng(4)
    group = draw(rng, exponent=0.5)
    assert same_exponent_p([group, group]) == pytest.approx(1.0, abs=1e-3)  # nested: the same data twice
    assert same_exponent_p([draw(rng, exponent=0.5, seeds=20), draw(rng, exponent=2.0, seeds=20)]) < 0.01


@pytest.mark.parametrize("lrs, trained, bases", [
    ([0.1, 0.2, 0.4], [True, True, False], [1.0, 1.0, 1.0]),  # one level
    ([0.1, 0.2, 0.4], [True, True, True], [1.0, 0.5, 1.0]),  # nothing failed
])
def test_no_law_without_two_levels_and_both_outcomes(lrs, trained, bases):
    law = fit_law(lrs, trained, bases)
    assert math.isnan(law.exponent) and law.link == "" and law.n == 3


def test_a_law_needs_one_base_per_seed():
    with pytest.raises(ValueError, match="one rate, outcome and base per seed"):
        fit_law([0.1, 0.2], [True, False], [1.0])


def test_the_law_table_has_a_row_per_setting_and_axis_that_varies(monkeypatch):
    monkeypatch.setattr("study.edge_law.FIT_DRAWS", 9)
    rng, rows = np.random.default_rng(5), []
    for sub, exponent in ((0.0, 0.5), (0.4, 1.0)):
        for lr, trained, base in zip(*draw(rng, exponent)):
            rows.append({"leak": 0.0, "sub": sub, "init_scale": 1.0, "momentum": 1 - base, "warmup_steps": 0.0,
                         "lr": lr, "trained": trained})
    table = law_table(pd.DataFrame(rows))
    assert list(table.columns) == LAW_COLUMNS
    assert list(table["axis"]) == ["momentum", "momentum"] and list(table["sub"]) == [0.0, 0.4]
    assert table["momentum"].isna().all() and (table["levels"] == 4).all() and table["fit_p"].between(0.1, 1).all()
    assert table["same_exponent_p"].nunique() == 1 and 0 <= table["same_exponent_p"].iloc[0] <= 1
    assert law_table(pd.DataFrame(rows[:40])).empty  # one momentum: no law


def test_levels_with_one_curve_are_told_from_levels_whose_curve_moved():
    rng = np.random.default_rng(6)
    same = draw(rng, exponent=0.0, bases=(1.0, 2.0, 3.0))  # one lr90 at every level
    assert same_curve_p(*same, draws=49) > 0.05
    moved = draw(rng, exponent=0.0, bases=(1.0, 2.0, 3.0), lr90_of={1.0: 0.1, 2.0: 0.3, 3.0: 0.9}.get)
    assert same_curve_p(*moved, draws=49) == 1 / 50
    assert math.isnan(same_curve_p([0.1, 0.2], [True, False], [0, 0]))  # one level
