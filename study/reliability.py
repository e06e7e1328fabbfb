"""Exact statistics of "did it train": k of n seeds, never a mean over trained and diverged runs.

Whether a seed trains is a Bernoulli outcome, so a setting's reliability is a binomial proportion:
its interval is Clopper-Pearson's (exact, two-sided), comparisons are exact tests (McNemar's on
the seeds two settings share, since the same seed gives both the same draws and data order;
Fisher's otherwise), with Holm's correction over the comparisons one report makes.

`Sprt` is the sequential test of the edge search: Wald's sequential probability ratio test between
"trains for at least `reliable` of seeds" (p1) and "at most `unreliable`" (p0), with error rates
`error` each way, truncated at `max_seeds` (then `undecided`). Wald's bounds: the probability of
calling a setting with p >= p1 unreliable is at most error / (1 - error), and likewise for calling
one with p <= p0 reliable; truncation only turns some decisions into `undecided`, so the bounds
hold for it too. `operating_characteristic` computes the exact probabilities.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

RELIABLE, UNRELIABLE, UNDECIDED = "reliable", "unreliable", "undecided"
MOST_SEEDS_FOR_POWER = 200  # past this a report says "more than 200 seeds"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion, k successes of n (n >= 1)."""
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: seeds that trained under the first
    setting only, and under the second only (seeds that agree carry no information)."""
    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value of k1/n1 against k2/n2 (independent seeds)."""
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


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
    outcomes = np.outer(stats.binom.pmf(k, n, p1), stats.binom.pmf(k, n, p2))
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
        pmf = stats.hypergeom.pmf(k1, 2 * n, n, total)
        p_values = (pmf[None, :] * (pmf[None, :] <= pmf[:, None] * (1 + 1e-7))).sum(axis=1)
        rejects[k1, total - k1] = p_values < alpha
    return rejects


@dataclass(frozen=True)
class Sprt:
    """Wald's SPRT of p >= `reliable` against p <= `unreliable`, `error` each way, at most `max_seeds`."""

    reliable: float = 0.9
    unreliable: float = 0.6
    error: float = 0.05
    max_seeds: int = 20

    @property
    def _steps(self) -> tuple[float, float]:
        """The log-likelihood ratio added by a seed that trained, and by one that did not."""
        return (math.log(self.reliable / self.unreliable),
                math.log((1 - self.reliable) / (1 - self.unreliable)))

    def verdict(self, trained: int, seeds: int) -> str | None:
        """RELIABLE, UNRELIABLE, UNDECIDED (max_seeds reached), or None: train another seed."""
        up, down = self._steps
        llr = trained * up + (seeds - trained) * down
        upper = math.log((1 - self.error) / self.error)
        if llr >= upper - 1e-12:
            return RELIABLE
        if llr <= -upper + 1e-12:
            return UNRELIABLE
        return UNDECIDED if seeds >= self.max_seeds else None

    def seeds_to_verdict(self, trained: int, seeds: int) -> int:
        """The fewest further seeds after which a verdict is possible (all of them trained, or none):
        training that many at once (one population) never trains a seed the test would not need."""
        for more in range(1, self.max_seeds - seeds + 1):
            if self.verdict(trained + more, seeds + more) or self.verdict(trained, seeds + more):
                return more
        return 0

    def operating_characteristic(self, p: float) -> dict[str, float]:
        """Exact probabilities of each verdict when every seed trains with probability p, and the
        expected number of seeds: a walk over (seeds, trained) with the undecided states carried."""
        outcome = {RELIABLE: 0.0, UNRELIABLE: 0.0, UNDECIDED: 0.0, "expected_seeds": 0.0}
        alive = {0: 1.0}  # trained -> probability, for walks not yet decided after `seeds` seeds
        for seeds in range(1, self.max_seeds + 1):
            step: dict[int, float] = {}
            for trained, prob in alive.items():
                step[trained + 1] = step.get(trained + 1, 0.0) + prob * p
                step[trained] = step.get(trained, 0.0) + prob * (1 - p)
            alive = {}
            for trained, prob in step.items():
                verdict = self.verdict(trained, seeds)
                if verdict is None:
                    alive[trained] = prob
                else:
                    outcome[verdict] += prob
                    outcome["expected_seeds"] += prob * seeds
        return outcome

    def describe(self) -> str:
        """The rule in words, with its shortest decisions, for the README, the CLI and the report."""
        fewest_reliable = next(n for n in range(1, self.max_seeds + 1) if self.verdict(n, n) == RELIABLE) \
            if self.verdict(self.max_seeds, self.max_seeds) == RELIABLE else None
        fewest_fail = next((n for n in range(1, self.max_seeds + 1) if self.verdict(0, n) == UNRELIABLE), None)
        bound = self.error / (1 - self.error)
        text = (f"Wald's SPRT of 'trains for >= {self.reliable:g} of seeds' against '<= {self.unreliable:g}', "
                f"{self.error:g} error each way (Wald's bound {bound:.3f}), at most {self.max_seeds} seeds")
        if fewest_reliable:
            text += f"; {fewest_reliable} of {fewest_reliable} trained decides reliable"
        if fewest_fail:
            text += f", {fewest_fail} failures before any success decide unreliable"
        return text
