"""Verdicts the findings document states, each computed from stored seeds by a named rule or test.

A setting "trains reliably" when it trains for at least RELIABLE (0.9) of its seeds. From k of n
seeds that claim *holds* only when the exact 95% interval of k/n lies at or above RELIABLE, *does not
hold* when it lies below, and is *not established with n seeds* otherwise, with what the interval
does establish ("more than 0.62 of seeds train"). Comparisons: McNemar's exact test on shared seeds
for trained-or-not, Wilcoxon's signed-rank test (exact, `reliability.wilcoxon_exact`) on the seeds
both settings trained for accuracy, Holm's correction over the comparisons of one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats

from study.ladder import EdgeDesign
from study.records import is_trained
from study.reliability import ALPHA, clopper_pearson, discordant, holm, mcnemar_exact, wilcoxon_exact

RELIABLE = EdgeDesign.reliability
HOLDS, DOES_NOT_HOLD = "holds", "does not hold"


def seeds_to_hold() -> int:
    """The fewest seeds with which "trains reliably" can hold: all of them trained, and the exact
    interval's lower end then at RELIABLE or above (36 for 0.9)."""
    return next(n for n in range(1, 1000) if clopper_pearson(n, n)[0] >= RELIABLE)


def not_established(n: int) -> str:
    return f"not established with {n} seeds"


@dataclass(frozen=True)
class Outcomes:
    """One setting's seeds: seed -> (trained, validation accuracy, step it diverged at or None), and
    seed -> test accuracy (on the test file, whatever validated)."""

    name: str
    seeds: dict[int, tuple[bool, float, int | None]]
    test: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, frame: pd.DataFrame, threshold: float) -> "Outcomes":
        """From `results.seed_frame` rows of one setting."""
        return cls(name, {int(r.seed): (is_trained(r.val_acc, threshold), float(r.val_acc),
                                        None if pd.isna(r.diverged_step) else int(r.diverged_step))
                          for r in frame.itertuples()},
                   {int(r.seed): float(r.test_acc) for r in frame.itertuples()})

    @property
    def k(self) -> int:
        return sum(trained for trained, _, _ in self.seeds.values())

    @property
    def n(self) -> int:
        return len(self.seeds)

    def trained(self) -> dict[int, bool]:
        return {seed: trained for seed, (trained, _, _) in self.seeds.items()}

    def share(self) -> str:
        low, high = clopper_pearson(self.k, self.n)
        return f"{self.k}/{self.n} trained (exact 95% CI {low:.2f}-{high:.2f})"

    def failures(self) -> str:
        """How the failed seeds failed: diverged (at which steps) or stalled below the threshold."""
        steps = sorted(step for trained, _, step in self.seeds.values() if not trained and step is not None)
        stalled = self.n - self.k - len(steps)
        if self.k == self.n:
            return "no seed failed"
        diverged = f"{len(steps)} diverged (at step {', '.join(map(str, steps))})" if steps else "none diverged"
        return f"{diverged}, {stalled} stalled below the threshold"


@dataclass(frozen=True)
class Verdict:
    statement: str
    evidence: str
    verdict: str
    test: str  # the rule or test, with its p-value
    p: float = math.nan  # of a comparison; NaN for a rule on one setting
    n: int = 0  # seeds the comparison rests on


def trains_reliably(statement: str, setting: Outcomes) -> Verdict:
    """At least RELIABLE of seeds train: the exact interval's lower end at or above it, or its upper
    end below it; otherwise not established, saying what the lower end does establish."""
    low, high = clopper_pearson(setting.k, setting.n)
    verdict = (HOLDS if low >= RELIABLE else DOES_NOT_HOLD if high < RELIABLE else
               f"{not_established(setting.n)}; at least {math.floor(low * 100) / 100:.2f} of seeds train "
               "(the interval's lower end)")
    return Verdict(statement, f"{setting.name}: {setting.share()}; {setting.failures()}", verdict,
                   f"exact interval against {RELIABLE:g}")


def fails_for_most(statement: str, setting: Outcomes) -> Verdict:
    low, high = clopper_pearson(setting.k, setting.n)
    verdict = HOLDS if high < 0.5 else DOES_NOT_HOLD if low > 0.5 else not_established(setting.n)
    return Verdict(statement, f"{setting.name}: {setting.share()}", verdict, "exact interval against 0.5")


def fails_for_some(statement: str, setting: Outcomes) -> Verdict:
    failed = sorted(seed for seed, (trained, _, _) in setting.seeds.items() if not trained)
    low, high = clopper_pearson(setting.n - setting.k, setting.n)
    evidence = (f"{setting.name}: {setting.share()}; failed seeds {', '.join(map(str, failed)) or 'none'}; "
                f"failure rate 95% CI {low:.2f}-{high:.2f}")
    verdict = HOLDS if failed else f"no failure in {setting.n} seeds (failure rate at most {high:.2f})"
    return Verdict(statement, evidence, verdict,
                   "count of failed seeds (our seeds are not the lesson's: its seed 1 has no match here)")


def more_reliable(statement: str, better: Outcomes, worse: Outcomes) -> Verdict:
    """`better` trains for more seeds than `worse`: McNemar's exact test on the seeds they share."""
    shared, only_better, only_worse = discordant(better.trained(), worse.trained())
    p = mcnemar_exact(only_better, only_worse)
    evidence = (f"{better.name} {better.share()}, {worse.name} {worse.share()}; of {shared} shared seeds "
                f"{only_better} trained only with {better.name}, {only_worse} only with {worse.name}")
    return Verdict(statement, evidence, _direction(p, only_better - only_worse, shared),
                   f"McNemar exact, p = {p:.2g}", p, shared)


def more_accurate(statement: str, better: Outcomes, worse: Outcomes, on: str = "val") -> Verdict:
    """`better`'s trained seeds reach a higher accuracy, on the validation images (`on="val"`) or on
    the test file (`"test"`: the same images whatever each set-up validated on): Wilcoxon's exact
    signed-rank test on the seeds both trained."""
    both = sorted(s for s in set(better.seeds) & set(worse.seeds) if better.seeds[s][0] and worse.seeds[s][0])
    accuracy = ((lambda o, s: o.seeds[s][1]) if on == "val" else (lambda o, s: o.test[s]))
    differences = np.array([accuracy(better, s) - accuracy(worse, s) for s in both])
    if len(both) < 2 or not differences.any():
        reason = "too few seeds trained with both" if len(both) < 2 else "every difference is zero"
        return Verdict(statement, f"{better.name} and {worse.name}: {len(both)} seeds trained with both",
                       not_established(len(both)), f"Wilcoxon signed-rank: {reason}")
    p = wilcoxon_exact(differences)
    nonzero = differences[differences != 0]
    signed_ranks = float((np.sign(nonzero) * stats.rankdata(np.abs(nonzero))).sum())  # W+ - W-: the test's side
    images = "validation" if on == "val" else "test-file"
    evidence = (f"{images} accuracy on the {len(both)} seeds both trained: {better.name} "
                f"{np.mean([accuracy(better, s) for s in both]):.3f}, {worse.name} "
                f"{np.mean([accuracy(worse, s) for s in both]):.3f} (median difference {np.median(differences):+.3f})")
    return Verdict(statement, evidence, _direction(p, signed_ranks, len(both)),
                   f"Wilcoxon signed-rank, exact, p = {p:.2g}", p, len(both))


def _direction(p: float, difference: float, n: int) -> str:
    if p >= ALPHA:
        return not_established(n)
    return HOLDS if difference > 0 else DOES_NOT_HOLD


def with_holm(verdicts: list[Verdict]) -> list[Verdict]:
    """Comparisons re-judged at Holm-adjusted p-values over the list (rules on one setting untouched)."""
    compared = [i for i, v in enumerate(verdicts) if not math.isnan(v.p)]
    adjusted = dict(zip(compared, holm([verdicts[i].p for i in compared])))
    out = []
    for i, v in enumerate(verdicts):
        if i in adjusted:
            verdict = v.verdict
            if adjusted[i] >= ALPHA and verdict in (HOLDS, DOES_NOT_HOLD):
                verdict = f"{not_established(v.n)} (after Holm's correction)"
            v = replace(v, verdict=verdict, test=f"{v.test}, Holm {adjusted[i]:.2g}")
        out.append(v)
    return out


def monotonicity(seeds: pd.DataFrame) -> dict[str, int]:
    """Whether a higher rate ever trained more seeds than a lower one of the same setting: over every
    pair of an edge search's probes of one setting, `pairs`, those where the higher rate trained a
    larger share (`higher_trained_more`), and those where it did so at p < ALPHA by Fisher's exact
    test, one-sided, uncorrected (`significant`). seeds: `results.seed_frame` of the search."""
    counts = {"pairs": 0, "higher_trained_more": 0, "significant": 0}
    for _, setting in seeds.groupby(["leak", "sub", "init_scale", "momentum", "warmup_steps"]):
        probes = setting.groupby("lr")["trained"].agg(["sum", "count"]).sort_index()
        rows = list(probes.itertuples())
        for i, low in enumerate(rows):
            for high in rows[i + 1:]:
                counts["pairs"] += 1
                if high.sum / high.count > low.sum / low.count:
                    counts["higher_trained_more"] += 1
                    one_sided = stats.fisher_exact([[high.sum, high.count - high.sum], [low.sum, low.count - low.sum]],
                                                   alternative="greater").pvalue
                    counts["significant"] += int(one_sided < ALPHA)
    return counts


def failure_modes(seeds: pd.DataFrame) -> str:
    """How the failed seeds of a frame failed: diverged (at which steps) or stalled below the
    threshold. seeds: `results.seed_frame` rows."""
    failed = seeds[~seeds["trained"]]
    if failed.empty:
        return "no seed failed"
    steps = failed["diverged_step"].dropna()
    diverged = (f"{len(steps)} diverged (at steps {steps.min():.0f}-{steps.max():.0f}, median {steps.median():g})"
                if len(steps) else "none diverged")
    return f"of {len(failed)} failed seeds, {diverged} and {len(failed) - len(steps)} stalled below the threshold"


def rank_agreement(bounds: list[float], edges: list[float]) -> tuple[float, float]:
    """Spearman's rank correlation of the sharpness bound with the measured edge, and its two-sided
    permutation p-value; NaN for both where either does not vary."""
    if len(set(bounds)) < 2 or len(set(edges)) < 2:
        return math.nan, math.nan
    rho = float(stats.spearmanr(bounds, edges).statistic)
    # The permutation p (every pairing where there are few, else 9,999 seeded ones): the t approximation
    # of spearmanr is off with a handful of settings and ties.
    test = stats.permutation_test((bounds,), lambda b: stats.spearmanr(b, edges).statistic,
                                  permutation_type="pairings", n_resamples=9_999, rng=0)
    return rho, float(test.pvalue)


def sharper_seeds_diverge(failed: list[float], trained: list[float]) -> tuple[float, str]:
    """Whether the seeds that failed started sharper (larger lambda_max) than those that trained:
    one-sided Mann-Whitney U. (p, a sentence-ready verdict)."""
    if not failed or not trained:
        return math.nan, "no comparison: every seed had the same outcome"
    p = float(stats.mannwhitneyu(failed, trained, alternative="greater").pvalue)
    smallest = 1 / math.comb(len(failed) + len(trained), len(failed))  # every failed seed sharper than every trained
    if p < ALPHA:
        return p, "the failed seeds started sharper"
    floor = (f", and with {len(failed)} against {len(trained)} seeds p cannot fall below {smallest:.2g}"
             if smallest >= ALPHA else "")
    return p, f"the failed seeds are not shown to start sharper{floor}"
