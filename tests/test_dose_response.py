"""The edge's curve (`study.dose_response`): what it recovers from many seeds, its interval against a
brute-force profile, and the cases the data cannot bound. Coverage on known curves is
tests/test_edge_simulation.py's."""

import math

import numpy as np
import pytest
from scipy import special, stats

from study.dose_response import MAX_SLOPE, Profile, fit_curve

RATES = np.array([0.1, 0.14, 0.2, 0.28, 0.4, 0.57, 0.8])


def draw(rates, lr90, slope, per_rate, rng, link="logit"):
    eta = (special.logit(0.9) if link == "logit" else stats.norm.ppf(0.9)) + slope * (np.log(rates) - math.log(lr90))
    p = special.expit(eta) if link == "logit" else stats.norm.cdf(eta)
    lrs = np.repeat(rates, per_rate)
    return lrs, rng.random(len(lrs)) < np.repeat(p, per_rate)


@pytest.mark.parametrize("lr90, slope", [(0.24, -5.0), (0.5, -3.0), (0.15, -8.0)])
def test_many_seeds_recover_the_curve(lr90, slope):
    lrs, trained = draw(RATES, lr90, slope, 400, np.random.default_rng(0))
    curve = fit_curve(lrs, trained, links=("logit",))
    assert curve.lr90 == pytest.approx(lr90, rel=0.05) and curve.slope == pytest.approx(slope, rel=0.12)
    assert curve.lr50 == pytest.approx(lr90 * math.exp(-special.logit(0.9) / slope), rel=0.05)
    assert curve.lr90_low < curve.lr90 < curve.lr90_high and curve.lr90_ratio() < 1.15
    assert curve.lr50_low < curve.lr50 < curve.lr50_high
    assert (curve.n, curve.k, curve.separated) == (len(lrs), int(trained.sum()), False)


def test_the_link_is_chosen_by_likelihood():
    rng = np.random.default_rng(1)
    for link in ("logit", "probit"):
        lrs, trained = draw(np.geomspace(0.05, 2.0, 12), 0.3, -3.0, 800, rng, link=link)
        assert fit_curve(lrs, trained).link == link


def test_the_interval_is_where_the_profile_is_within_1_92_of_its_maximum():
    lrs, trained = draw(RATES, 0.24, -5.0, 6, np.random.default_rng(2))
    curve = fit_curve(lrs, trained, links=("logit",))
    profile, x = Profile(np.log(lrs), trained, 0.9, "logit"), np.log(lrs)
    rates = np.linspace(x.min() - 1, x.max() + 1, 121)
    slopes = np.linspace(-MAX_SLOPE, MAX_SLOPE, 601)
    values = np.array([max(profile.loglik(r, b) for b in slopes) for r in rates])  # brute force, both ways
    inside = rates[values >= values.max() - stats.chi2.ppf(0.95, 1) / 2]
    step = max(rates[1] - rates[0], 0.05)
    assert math.log(curve.lr90) == pytest.approx(rates[values.argmax()], abs=step)
    assert math.log(curve.lr90_low) == pytest.approx(inside.min(), abs=step)
    assert math.log(curve.lr90_high) == pytest.approx(inside.max(), abs=step)


@pytest.mark.parametrize("outcome", [True, False])
def test_a_setting_whose_seeds_all_trained_or_all_failed_has_no_curve(outcome):
    curve = fit_curve([0.1] * 5 + [0.2] * 5 + [0.4] * 5, [outcome] * 15)
    assert all(math.isnan(value) for value in (curve.lr50, curve.lr90, curve.lr90_low, curve.lr90_high))
    assert (curve.n, curve.k) == (15, 15 * outcome) and math.isnan(curve.lr90_ratio())


def test_an_upper_end_the_data_cannot_bound_is_open():
    curve = fit_curve([0.1] * 10 + [0.2] * 10, [True] * 19 + [False])  # one failure in twenty
    assert math.isnan(curve.lr90_high) and curve.n == 20


def test_separated_outcomes_bound_the_rate_by_the_gap():
    curve = fit_curve([0.1] * 8 + [0.2] * 8 + [0.4] * 8, [True] * 16 + [False] * 8)
    assert curve.separated
    assert 0.1 < curve.lr90_low < 0.2 <= curve.lr90 < curve.lr90_high < 0.4 * 1.5


def test_outcomes_mixed_at_one_rate_only_are_separated_too():
    lrs = [0.1] * 4 + [0.14] * 4 + [0.2] * 4 + [0.28] * 4 + [0.4] * 4
    trained = [True] * 8 + [True, True, False, False] + [False] * 8  # quasi-complete separation
    assert fit_curve(lrs, trained).separated
    assert not fit_curve(lrs, [True] * 8 + [True, True, False, False] + [True] + [False] * 7).separated


def test_no_seed_is_no_curve():
    with pytest.raises(ValueError, match="no seeds"):
        fit_curve([], [])
