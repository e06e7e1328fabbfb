"""The edge's two methods on known curves: bisection over a ladder with the sequential test
(`study.ladder`, `study.sequential`) against the adaptive design (`study.adaptive`), each seed a
Bernoulli draw from a logistic curve of known lr90 and slope. What the README's table and its test
(tests/test_edge_simulation.py) measure: how often the fitted curve's 95% interval holds the true
lr90 (coverage), how far the estimate lies from it (as a ratio), the width of the interval, and the
trainings spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from study.adaptive import AdaptiveDesign
from study.dose_response import fit_curve
from study.ladder import METHODS, EdgeDesign, bisection


@dataclass(frozen=True)
class KnownCurve:
    """P(trained | lr) = expit(logit(0.9) + slope (log lr - log lr90))."""

    lr90: float
    slope: float

    def trains(self, lr: float, seeds: int, rng: np.random.Generator) -> np.ndarray:
        p = special.expit(special.logit(0.9) + self.slope * (math.log(lr) - math.log(self.lr90)))
        return rng.random(seeds) < p


def run_bisection(curve: KnownCurve, design: EdgeDesign, rng: np.random.Generator):
    """Every seed's (lr, trained) of one setting's bisection with the sequential test, and the
    bisection's own answer (the highest rung found reliable, NaN if none)."""
    ladder, verdicts, lrs, trained = design.ladder(), {}, [], []
    state = bisection(verdicts, len(ladder))
    while (rung := state.next_rung) is not None:
        outcomes: dict[int, bool] = {}
        while seeds := design.seeds_to_train(outcomes):
            for seed, result in zip(seeds, curve.trains(ladder[rung], len(seeds), rng)):
                outcomes[seed] = bool(result)
        k, n = sum(outcomes.values()), len(outcomes)
        verdicts[rung] = design.test().verdict(k, n) or "undecided"
        lrs += [ladder[rung]] * n
        trained += list(outcomes.values())
        state = bisection(verdicts, len(ladder))
    return lrs, trained, ladder[state.stable] if state.stable >= 0 else math.nan


def run_adaptive(curve: KnownCurve, adaptive: AdaptiveDesign, rng: np.random.Generator):
    """Every seed's (lr, trained) of one setting under the adaptive design, and its final curve."""
    lrs, trained = [], []
    while True:
        rate, curve_fit = adaptive.next_step(lrs, trained)
        if rate is None:
            return lrs, trained, curve_fit
        lrs += [rate] * adaptive.round_seeds
        trained += list(curve.trains(rate, adaptive.round_seeds, rng))


def simulate(curves: list[KnownCurve], reps: int, seed: int = 0, design: EdgeDesign = EdgeDesign(method="bisect"),
             adaptive: AdaptiveDesign | None = None, methods: tuple[str, ...] = METHODS) -> pd.DataFrame:
    """One row per (method, curve, repetition): lr90 (the estimate), low, high, covered, ratio
    (high / low), error (estimate / truth, folded to >= 1) and trainings. Bisection is scored twice:
    its own answer (the highest reliable rung, bracketed by the next rung) and the curve fitted to
    its seeds. The adaptive design searches the ladder's range unless given."""
    rng = np.random.default_rng(seed)
    adaptive = adaptive or AdaptiveDesign(min(design.ladder()), max(design.ladder()))
    rows = []
    for curve in curves:
        for rep in range(reps):
            if "bisect" in methods:
                lrs, trained, edge = run_bisection(curve, design, rng)
                fitted = fit_curve(lrs, trained)
                rows.append(_row("bisection, its edge", curve, rep, edge, _rung_interval(design, edge), len(lrs)))
                rows.append(_row("bisection, fitted", curve, rep, fitted.lr90, (fitted.lr90_low, fitted.lr90_high),
                                 len(lrs)))
            if "adaptive" in methods:
                lrs, trained, fitted = run_adaptive(curve, adaptive, rng)
                rows.append(_row("adaptive, fitted", curve, rep, fitted.lr90, (fitted.lr90_low, fitted.lr90_high),
                                 len(lrs)))
    return pd.DataFrame(rows)


def _rung_interval(design: EdgeDesign, edge: float) -> tuple[float, float]:
    """The bisection's bracket: from its edge to the next rung (what it says the edge lies between)."""
    ladder = design.ladder()
    if math.isnan(edge):
        return math.nan, ladder[0]
    index = ladder.index(edge)
    return edge, ladder[index + 1] if index + 1 < len(ladder) else math.nan


def _row(method: str, curve: KnownCurve, rep: int, estimate: float, interval: tuple[float, float],
         trainings: int) -> dict:
    low = 0.0 if math.isnan(interval[0]) else interval[0]
    high = math.inf if math.isnan(interval[1]) else interval[1]
    error = math.exp(abs(math.log(estimate / curve.lr90))) if estimate > 0 else math.inf
    return {"method": method, "lr90_true": curve.lr90, "slope": curve.slope, "rep": rep, "lr90": estimate,
            "low": low, "high": high, "covered": low <= curve.lr90 <= high, "ratio": high / low if low else math.inf,
            "open": math.isnan(interval[0]) or math.isnan(interval[1]), "error": error, "trainings": trainings}


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method (and curve): coverage of the 95% interval (an open end counts as covering), the
    share of intervals with an open end, coverage among the bounded ones, median and 90th-percentile
    error ratio, median interval ratio (infinite where open), mean trainings."""
    bounded = frame[~frame["open"]].groupby(["method", "lr90_true", "slope"], sort=False)["covered"].mean()
    grouped = frame.groupby(["method", "lr90_true", "slope"], sort=False)
    table = grouped.agg(coverage=("covered", "mean"), open=("open", "mean"), error_median=("error", "median"),
                        error_p90=("error", lambda e: e.quantile(0.9)), ratio_median=("ratio", "median"),
                        trainings=("trainings", "mean"), reps=("rep", "count"))
    table.insert(2, "coverage_bounded", bounded.reindex(table.index))
    return table.reset_index()
