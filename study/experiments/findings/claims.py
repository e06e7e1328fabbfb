"""Verdicts the findings document states, each computed from stored seeds by a named rule or test.

A setting "trains reliably" when it trains for at least RELIABLE of its seeds and "unreliably" at
UNRELIABLE or less: the levels of the edge's sequential test. From k of n seeds, the claim that a
setting trains reliably *holds* when the exact 95% interval of k/n lies above UNRELIABLE, *does not
hold* when it lies below RELIABLE, and is *not established with n seeds* otherwise. Comparisons:
McNemar's exact test on shared seeds for trained-or-not, Wilcoxon's signed-rank test on the seeds
both settings trained for accuracy, Holm's correction over the comparisons of one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from study.ladder import EdgeDesign
from study.records import is_trained
from study.reliability import ALPHA, clopper_pearson, discordant, holm, mcnemar_exact

RELIABLE, UNRELIABLE = EdgeDesign.reliability, EdgeDesign.unreliability
HOLDS, DOES_NOT_HOLD = "holds", "does not hold"


def not_established(n: int) -> str:
    return f"not established with {n} seeds"


@dataclass(frozen=True)
class Outcomes:
    """One setting's seeds: seed -> (trained, validation accuracy, step it diverged at or None)."""

    name: str
    seeds: dict[int, tuple[bool, float, int | None]]

    @classmethod
    def of(cls, name: str, frame: pd.DataFrame, threshold: float) -> "Outcomes":
        """From `results.seed_frame` rows of one setting."""
        return cls(name, {int(r.seed): (is_trained(r.val_acc, threshold), float(r.val_acc),
                                        None if pd.isna(r.diverged_step) else int(r.diverged_step))
                          for r in frame.itertuples()})

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


@dataclass(frozen=True)
class Verdict:
    statement: str
    evidence: str
    verdict: str
    test: str  # the rule or test, with its p-value
    p: float = math.nan  # of a comparison; NaN for a rule on one setting
    n: int = 0  # seeds the comparison rests on


def trains_reliably(statement: str, setting: Outcomes) -> Verdict:
    low, high = clopper_pearson(setting.k, setting.n)
    verdict = (DOES_NOT_HOLD if high < RELIABLE else HOLDS if low > UNRELIABLE else not_established(setting.n))
    return Verdict(statement, f"{setting.name}: {setting.share()}", verdict,
                   f"exact interval against {UNRELIABLE:g} and {RELIABLE:g}")


def fails_for_most(statement: str, setting: Outcomes) -> Verdict:
    low, high = clopper_pearson(setting.k, setting.n)
    verdict = HOLDS if high < 0.5 else DOES_NOT_HOLD if low > 0.5 else not_established(setting.n)
    return Verdict(statement, f"{setting.name}: {setting.share()}", verdict, "exact interval against 0.5")


def fails_for_some(statement: str, setting: Outcomes) -> Verdict:
    failed = sorted(seed for seed, (trained, _, _) in setting.seeds.items() if not trained)
    low, high = clopper_pearson(setting.n - setting.k, setting.n)
    evidence = (f"{setting.name}: {setting.share()}; failed seeds {', '.join(map(str, failed)) or 'none'}; "
                f"failure rate {low:.2f}-{high:.2f}")
    return Verdict(statement, evidence, HOLDS if failed else DOES_NOT_HOLD,
                   "count of failed seeds (our seeds are not the lesson's: its seed 1 has no match here)")


def more_reliable(statement: str, better: Outcomes, worse: Outcomes) -> Verdict:
    """`better` trains for more seeds than `worse`: McNemar's exact test on the seeds they share."""
    shared, only_better, only_worse = discordant(better.trained(), worse.trained())
    p = mcnemar_exact(only_better, only_worse)
    evidence = (f"{better.name} {better.share()}, {worse.name} {worse.share()}; of {shared} shared seeds "
                f"{only_better} trained only with {better.name}, {only_worse} only with {worse.name}")
    return Verdict(statement, evidence, _direction(p, only_better - only_worse, shared),
                   f"McNemar exact, p = {p:.2g}", p, shared)


def more_accurate(statement: str, better: Outcomes, worse: Outcomes) -> Verdict:
    """`better`'s trained seeds reach a higher validation accuracy: Wilcoxon's signed-rank test on
    the seeds both trained."""
    both = sorted(s for s in set(better.seeds) & set(worse.seeds) if better.seeds[s][0] and worse.seeds[s][0])
    differences = np.array([better.seeds[s][1] - worse.seeds[s][1] for s in both])
    if len(both) < 2 or not differences.any():
        return Verdict(statement, f"{better.name} and {worse.name}: {len(both)} seeds trained with both",
                       not_established(len(both)),
                       "Wilcoxon signed-rank: too few seeds trained with both")
    p = float(stats.wilcoxon(differences).pvalue)
    evidence = (f"on the {len(both)} seeds both trained: {better.name} {np.mean([better.seeds[s][1] for s in both]):.3f}, "
                f"{worse.name} {np.mean([worse.seeds[s][1] for s in both]):.3f} (median difference "
                f"{np.median(differences):+.3f})")
    return Verdict(statement, evidence, _direction(p, float(np.median(differences)), len(both)),
                   f"Wilcoxon signed-rank, p = {p:.2g}", p, len(both))


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


def edge_interval(row: dict) -> tuple[float, float]:
    """[lowest, highest) learning rate the edge can be at, from an `edge_table` row: between the
    largest stable rung and the first unstable one (0 or inf where the ladder ended first)."""
    low = row["max_stable_lr"] if not pd.isna(row["max_stable_lr"]) else 0.0
    high = row["first_unstable_lr"] if not pd.isna(row["first_unstable_lr"]) else math.inf
    return low, high


def edge_point(row: dict, step: float) -> float:
    """One number for ranking edges: the geometric middle of the interval (a rung step beyond the
    ladder where it ended first)."""
    low, high = edge_interval(row)
    if low == 0:
        return high / math.sqrt(step)
    if math.isinf(high):
        return low * math.sqrt(step)
    return math.sqrt(low * high)


MOMENTUM_SCALINGS = {
    "lr": lambda mu: 1.0,
    "lr / (1 - mu)": lambda mu: 1 / (1 - mu),
    "lr / (1 + mu)": lambda mu: 1 / (1 + mu),
}


def momentum_scalings(rows: list[dict]) -> dict[str, bool]:
    """For each candidate invariant, whether one value of it lies inside every momentum's edge
    interval (each interval scaled by the candidate): consistent with the measured edges or not."""
    verdicts = {}
    for name, factor in MOMENTUM_SCALINGS.items():
        intervals = [tuple(x * factor(r["momentum"]) for x in edge_interval(r)) for r in rows]
        verdicts[name] = max(low for low, _ in intervals) < min(high for _, high in intervals)
    return verdicts


def rank_agreement(bounds: list[float], edges: list[float]) -> tuple[float, float]:
    """Spearman's rank correlation of the sharpness bound with the measured edge, and its p-value;
    NaN for both where either does not vary."""
    if len(set(bounds)) < 2 or len(set(edges)) < 2:
        return math.nan, math.nan
    result = stats.spearmanr(bounds, edges)
    return float(result.statistic), float(result.pvalue)


def sharper_seeds_diverge(failed: list[float], trained: list[float]) -> tuple[float, str]:
    """Whether the seeds that failed started sharper (larger lambda_max) than those that trained:
    one-sided Mann-Whitney U. (p, a sentence-ready verdict)."""
    if not failed or not trained:
        return math.nan, "no comparison: every seed had the same outcome"
    p = float(stats.mannwhitneyu(failed, trained, alternative="greater").pvalue)
    n = len(failed) + len(trained)
    return p, ("the failed seeds started sharper" if p < ALPHA else
               f"the failed seeds cannot be told apart by their lambda_max at init with {n} seeds")
