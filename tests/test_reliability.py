"""The exact statistics of k of n seeds, against scipy and against simulation."""

import numpy as np
import pytest
from scipy import stats

from study.reliability import (clopper_pearson, discordant, fisher_exact, fisher_power, holm, mcnemar_exact, wilcoxon_exact,
                               seeds_for_power)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (7, 10), (10, 10), (3, 20), (19, 20)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    expected = stats.binomtest(k, n).proportion_ci(method="exact")
    assert clopper_pearson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)
    low, high = clopper_pearson(k, n)
    assert low <= k / n <= high
    assert (low == 0) == (k == 0) and (high == 1) == (k == n)


def test_mcnemar_uses_only_discordant_seeds():
    # 8 seeds trained under the first setting only, none under the second only: p = 2 * 0.5^8.
    assert mcnemar_exact(8, 0) == pytest.approx(2 * 0.5 ** 8)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0


def test_fisher_matches_the_issue_example():
    # 7/10 against 10/10, as quoted in the edge issue: p = 0.21.
    assert fisher_exact(7, 10, 10, 10) == pytest.approx(0.2105, abs=1e-3)


def test_holm_adjusts_in_step_down_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 2 x 0.8 capped at 1; never below an earlier step


def test_seeds_for_power_is_the_fewest_with_80_percent_exact_power():
    assert seeds_for_power(0.5, 0.5) is None
    n = seeds_for_power(0.9, 0.5)
    assert fisher_power(0.9, 0.5, n) >= 0.8 > fisher_power(0.9, 0.5, n - 1)
    assert seeds_for_power(0.9, 0.3) < n < seeds_for_power(0.9, 0.7)
    assert seeds_for_power(0.9, 0.89) is None  # more than the most it looks at
    # The exact power, checked by simulating Fisher's test with that many seeds per setting.
    rng = np.random.default_rng(0)
    hits = [fisher_exact(rng.binomial(n, 0.9), n, rng.binomial(n, 0.5), n) < 0.05 for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(fisher_power(0.9, 0.5, n), abs=4 * (0.2 * 0.8 / 2000) ** 0.5)


@pytest.mark.parametrize("n", [1, 4, 15, 40])
def test_the_power_computation_rejects_exactly_where_scipys_fisher_test_does(n):
    from study.reliability import _fisher_rejects

    expected = [[stats.fisher_exact([[a, n - a], [b, n - b]]).pvalue < 0.05 for b in range(n + 1)]
                for a in range(n + 1)]
    assert (_fisher_rejects(n, 0.05) == np.array(expected)).all()


def test_discordant_pairs_count_only_shared_seeds_that_disagree():
    first = {0: True, 1: True, 2: False, 3: False, 7: True}
    second = {0: True, 1: False, 2: True, 3: False, 4: True, 5: False}
    assert discordant(first, second) == (4, 1, 1)
    assert discordant(second, first) == (4, 1, 1)
    assert discordant({0: True, 1: True}, {0: False, 1: False}) == (2, 2, 0)
    assert discordant({0: True}, {1: True}) == (0, 0, 0)


@pytest.mark.parametrize("differences", [
    [0.01, 0.01, 0.02, -0.01, 0.03, 0.02, 0.01, 0.04, 0.02, 0.01, 0.03],  # ties
    [0.012, -0.003, 0.021, 0.007, 0.015, -0.009, 0.004, 0.011],  # no ties
    [0.01, 0.0, -0.02, 0.01, 0.0, 0.03, -0.01],  # zeros, dropped
    [-0.02, -0.01, -0.03],
])
def test_the_exact_wilcoxon_counts_every_sign_pattern_with_the_datas_ties(differences):
    every_pattern = stats.wilcoxon(differences, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert wilcoxon_exact(differences) == pytest.approx(every_pattern, rel=1e-9)


def test_the_exact_wilcoxon_differs_from_the_normal_approximation_where_they_tie():
    # 20 seeds, one negative: the normal approximation scipy uses with ties overstates p.
    differences = [0.01] * 10 + [0.02] * 9 + [-0.01]
    exact = wilcoxon_exact(differences)
    assert exact == pytest.approx(24 / 2**20, rel=1e-9)  # none or one of the 11 smallest negative: 12 patterns a side
    assert stats.wilcoxon(differences, method="approx").pvalue > 5 * exact
