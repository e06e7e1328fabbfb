"""Exact statistics of "did it train": k of n seeds, never a mean over trained and diverged runs.

Whether a seed trains is a Bernoulli outcome, so a setting's reliability is a binomial proportion:
its interval is Clopper-Pearson's (exact, two-sided), comparisons are exact tests (McNemar's on
the seeds two settings share, since the same seed gives both the same draws and data order;
Fisher's otherwise), with Holm's correction over the comparisons one report makes.
The sequential test of the edge search is `study.sequential.Sprt`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import scipy  # its submodules load on first use: a worker that never fits pays nothing

ALPHA = 0.05  # every test's level; family-wise over the comparisons of one report or document (Holm)
MOST_SEEDS_FOR_POWER = 200  # past this a report says "more than 200 seeds"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion, k successes of n (n >= 1)."""
    interval = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of a mean (two or more values): for the accuracy of seeds that all
    trained, never for a mix of trained and diverged ones."""
    n, mean = len(values), sum(values) / len(values)
    sem = scipy.stats.tstd(values) / math.sqrt(n)
    half = scipy.stats.t.ppf((1 + level) / 2, n - 1) * sem
    return mean - half, mean + half


def discordant(first: Mapping[int, bool], second: Mapping[int, bool]) -> tuple[int, int, int]:
    """Two settings' per-seed outcomes (seed -> trained), paired on the seeds both ran: (shared seeds,
    seeds that trained under the first only, under the second only), what `mcnemar_exact` takes."""
    shared = set(first) & set(second)
    return (len(shared), sum(first[s] and not second[s] for s in shared),
            sum(second[s] and not first[s] for s in shared))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: seeds that trained under the first
    setting only, and under the second only (seeds that agree carry no information)."""
    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(scipy.stats.binomtest(only_first, discordant, 0.5).pvalue)


def wilcoxon_exact(differences) -> float:
    """Two-sided p of Wilcoxon's signed-rank test from its exact null distribution given the data's
    ranks: every one of the 2^n sign patterns equally likely, tied absolute values sharing their mean
    rank, zero differences dropped (Wilcoxon's convention, as scipy's default). Exact where ties make
    scipy's exact method fall back to the normal approximation; counted over sums of doubled ranks
    (integers), so n of a few hundred costs nothing."""
    values = np.asarray(differences, dtype=float)
    values = values[values != 0]
    if len(values) == 0:
        return 1.0
    doubled = np.rint(2 * scipy.stats.rankdata(np.abs(values))).astype(int)  # mean ranks are halves
    counts = np.zeros(doubled.sum() + 1)
    counts[0] = 1.0
    for rank in doubled:  # the number of sign patterns giving each sum of the positive ranks
        counts[rank:] = counts[rank:] + counts[:-rank]
    null = counts / counts.sum()
    observed = doubled[values > 0].sum()
    centre = doubled.sum() / 2
    extreme = np.abs(np.arange(len(null)) - centre) >= abs(observed - centre) - 1e-9
    return float(min(1.0, null[extreme].sum()))


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value of k1/n1 against k2/n2 (independent seeds)."""
    return float(scipy.stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: family-wise error control."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seeds_for_power(p1: float, p2: float, power: float = 0.8, alpha: float = 0.05,
                    most: int = MOST_SEEDS_FOR_POWER) -> int | None:
    """The fewest seeds per setting with which Fisher's exact test (two-sided, `alpha`) tells true
    proportions p1 and p2 apart with probability >= `power`, computed exactly; None when p1 == p2 or
    more than `most` seeds would be needed."""
    if p1 == p2:
        return None
    if fisher_power(p1, p2, most, alpha) < power:
        return None
    low, high = 1, most  # power(low) < target <= power(high), searched by bisection
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fisher_power(p1, p2, mid, alpha) >= power else (mid, high)
    return high


def fisher_power(p1: float, p2: float, n: int, alpha: float = 0.05) -> float:
    """The exact probability that Fisher's test rejects at `alpha` with n seeds per setting."""
    k = np.arange(n + 1)
    outcomes = np.outer(scipy.stats.binom.pmf(k, n, p1), scipy.stats.binom.pmf(k, n, p2))
    return float(outcomes[_fisher_rejects(n, alpha)].sum())


@functools.lru_cache(maxsize=None)
def _fisher_rejects(n: int, alpha: float) -> np.ndarray:
    """(k1, k2) -> whether Fisher's test rejects k1/n against k2/n: the same for every p1, p2.

    Fisher's two-sided p-value of a table is the hypergeometric probability of the tables with its
    margins that are no more probable than it (scipy's rule, with its 1e-7 relative tolerance);
    here for all tables of each total k1 + k2 at once."""
    rejects = np.zeros((n + 1, n + 1), dtype=bool)
    for total in range(2 * n + 1):
        k1 = np.arange(max(0, total - n), min(n, total) + 1)
        pmf = scipy.stats.hypergeom.pmf(k1, 2 * n, n, total)
        p_values = (pmf[None, :] * (pmf[None, :] <= pmf[:, None] * (1 + 1e-7))).sum(axis=1)
        rejects[k1, total - k1] = p_values < alpha
    return rejects
