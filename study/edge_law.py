"""How the edge moves with momentum or init scale, as a law: lr90 proportional to base^exponent.

For momentum the base is 1 - momentum (lr90(mu) = lr90(0) (1 - mu)^alpha), for init scale the
scale itself. One curve is fitted jointly to every seed of a setting at every level of the axis:

    link(P(trained)) = b0 + b1 log(lr) + b2 log(base),  so  log(lr_p) = (link(p) - b0 - b2 log(base)) / b1

and every rate lr_p, lr90 included, scales as base^exponent with exponent = -b2 / b1 (the levels share
the slope b1: the law is that the curve moves without changing its shape). As in
`study.dose_response`, the likelihood is Firth-penalised (half the log-determinant of the Fisher
information of (b0, b1, b2), finite where outcomes are separated), the link (logit or probit) is the
one with the larger penalised likelihood, and the exponent's 95% interval is where its profile
(maximised over b0 and b1 with b2 = -exponent b1) stays within chi2_1(0.95) / 2 of its maximum,
widened to hold the other link's. An end beyond +-MAX_EXPONENT is open (NaN).

Two likelihood-ratio tests of nested models on the plain (unpenalised) likelihood: the penalty grows
with the number of parameters, so a penalised ratio of models of different sizes would lean towards
the larger one (a separated level's plain fit is a step, its likelihood the supremum):
  - `fit_p`: the law against one free curve per level (two parameters each), its p by parametric
    bootstrap (`_fit_p` says why not chi2). A small p says the law does not describe the levels;
    then its exponent is a summary, not a law.
  - `same_exponent_p`: several settings' laws with one exponent against one each, against chi2
    (df = settings - 1): approximate, as chi2 is where a level is separated (a bootstrap would refit
    the profile hundreds of times); on data drawn with one exponent it rejected 0 of 60 at 0.05.
Levels with no law between them (warm-up 0, 5, 20 steps) are compared by `same_curve_p`: one curve
for all against one location per level, by parametric bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy  # its submodules load on first use: a worker that never fits pays nothing

from study.dose_response import LEVEL, LINKS, link_of

MAX_EXPONENT = 6.0  # beyond this an interval end is open: the rate would change 2^6-fold per halving
FIT_DRAWS = 199  # of the law's fit test: p to 1/200, about 5 s per setting on one core
MAX_COEFFICIENT = 200.0  # of the unpenalised fits, in units of the centred log rate: a step function


@dataclass(frozen=True)
class Law:
    """One setting's law across the levels of an axis; NaN where the data cannot say."""

    link: str
    exponent: float
    exponent_low: float
    exponent_high: float
    fit_p: float  # the law against one curve per level
    levels: int
    n: int  # seeds
    k: int  # seeds that trained

    def to_dict(self) -> dict:
        return asdict(self)


class Likelihood:
    """Binary log-likelihood of link(P(trained)) = X @ beta; Firth-penalised unless `firth` is False."""

    def __init__(self, X: np.ndarray, trained: np.ndarray, link: str, firth: bool = True):
        self.X, self.y, self.firth = X, trained.astype(float), firth
        _, self.log_p, self.log_q, self.log_density = link_of(link)

    def __call__(self, beta: np.ndarray) -> float:
        eta = self.X @ beta
        log_p, log_q = self.log_p(eta), self.log_q(eta)
        loglik = float(self.y @ log_p + (1 - self.y) @ log_q)
        if not self.firth:
            return loglik
        weight = np.exp(2 * self.log_density(eta) - log_p - log_q)
        sign, log_det = np.linalg.slogdet((self.X * weight[:, None]).T @ self.X)
        return loglik + (0.5 * log_det if sign > 0 else -math.inf)

    def maximum(self, start: np.ndarray) -> tuple[np.ndarray, float]:
        """(beta, log-likelihood) at the maximum, searched from `start`. Without the penalty a
        separated level has no finite maximum: the search stops at |beta| = MAX_COEFFICIENT, where
        the likelihood is within rounding of its supremum."""
        bounds = None if self.firth else [(-MAX_COEFFICIENT, MAX_COEFFICIENT)] * len(start)
        if bounds is not None and len(start) == 3:  # b2 = -exponent b1 of a profile reaches this far
            bounds[2] = (-MAX_COEFFICIENT * MAX_EXPONENT, MAX_COEFFICIENT * MAX_EXPONENT)
        found = scipy.optimize.minimize(lambda beta: -self(beta), start, method="Nelder-Mead", bounds=bounds,
                                        options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000})
        return found.x, -float(found.fun)


class LawFit:
    """One link's fit of the law to per-seed log rates `x`, log bases `c` (both centred, which moves
    only b0) and outcomes `trained`, with the exponent's profile; penalised, or plain for the tests."""

    def __init__(self, x: np.ndarray, c: np.ndarray, trained: np.ndarray, link: str, firth: bool = True,
                 start: np.ndarray | None = None):
        self.x, self.c = x - x.mean(), c - c.mean()
        self.likelihood = Likelihood(np.column_stack([np.ones_like(x), self.x, self.c]), trained, link, firth)
        self.link = link
        self.beta, self.loglik = self.likelihood.maximum(np.array([0.0, -2.0, 0.0]) if start is None else start)
        self.exponent = -self.beta[2] / self.beta[1] if self.beta[1] != 0 else math.nan

    def profile(self, exponent: float) -> float:
        """The log-likelihood maximised over (b0, b1) with b2 = -exponent b1."""
        def loglik(b):
            return self.likelihood(np.array([b[0], b[1], -exponent * b[1]]))
        bounds = None if self.likelihood.firth else [(-MAX_COEFFICIENT, MAX_COEFFICIENT)] * 2
        found = scipy.optimize.minimize(lambda b: -loglik(b), self.beta[:2], method="Nelder-Mead", bounds=bounds,
                                        options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 2000})
        return -float(found.fun)

    def interval(self) -> tuple[float, float]:
        """The exponent's profile-likelihood interval; NaN for an end beyond +-MAX_EXPONENT."""
        if not math.isfinite(self.exponent) or abs(self.exponent) >= MAX_EXPONENT:
            return math.nan, math.nan
        drop = scipy.stats.chi2.ppf(LEVEL, 1) / 2
        inside = lambda a: self.profile(a) - (self.loglik - drop)  # noqa: E731  (> 0 inside)
        ends = []
        for limit in (-MAX_EXPONENT, MAX_EXPONENT):
            ends.append(math.nan if inside(limit) > 0 else
                        scipy.optimize.brentq(inside, min(self.exponent, limit), max(self.exponent, limit), xtol=1e-4))
        return ends[0], ends[1]


def fit_law(lrs, trained, bases, links: tuple[str, ...] = LINKS, fit_draws: int | None = None) -> Law:
    """The law through per-seed outcomes: `lrs` the rate each seed ran at, `trained` whether it
    trained, `bases` its level's base (1 - momentum, or init scale). `fit_draws` parametric-bootstrap
    draws (default FIT_DRAWS) give `fit_p`; 0: no test (NaN)."""
    x, c, y = _arrays(lrs, trained, bases)
    levels = len(np.unique(c))
    if levels < 2 or y.all() or not y.any():
        return Law("", math.nan, math.nan, math.nan, math.nan, levels, len(y), int(y.sum()))
    fits = [LawFit(x, c, y, link) for link in links]
    best = max(fits, key=lambda fit: fit.loglik)
    intervals = [fit.interval() for fit in fits]
    low = math.nan if any(math.isnan(lo) for lo, _ in intervals) else min(lo for lo, _ in intervals)
    high = math.nan if any(math.isnan(hi) for _, hi in intervals) else max(hi for _, hi in intervals)
    draws = FIT_DRAWS if fit_draws is None else fit_draws
    fit_p = _fit_p(x, c, y, best, draws) if draws else math.nan
    return Law(best.link, float(best.exponent), low, high, fit_p, levels, len(y), int(y.sum()))


def same_exponent_p(groups: list[tuple], links: tuple[str, ...] = LINKS) -> float:
    """p of the likelihood-ratio test that several settings' laws share one exponent. groups: one
    (lrs, trained, bases) per setting; each keeps its own link (its penalised fit's), b0 and slope."""
    fits = []
    for lrs, trained, bases in groups:
        x, c, y = _arrays(lrs, trained, bases)
        best = max((LawFit(x, c, y, link) for link in links), key=lambda fit: fit.loglik)
        fits.append(LawFit(x, c, y, best.link, firth=False, start=best.beta))
    separate = sum(fit.loglik for fit in fits)
    common = scipy.optimize.minimize_scalar(lambda a: -sum(fit.profile(a) for fit in fits),
                                            bounds=(-MAX_EXPONENT, MAX_EXPONENT), method="bounded",
                                            options={"xatol": 1e-4})
    statistic = max(2 * (separate + float(common.fun)), 0.0)
    return float(scipy.stats.chi2.sf(statistic, len(fits) - 1))


def _fit_p(x: np.ndarray, c: np.ndarray, y: np.ndarray, law: LawFit, draws: int) -> float:
    """p of the law against one free curve per level, by parametric bootstrap: outcomes drawn from
    the fitted (penalised) law at the same rates, `draws` times, each refitted both ways. chi2 does
    not serve here: with 30-60 seeds per level a level's free fit is often a step (separated), and
    on outcomes drawn from a law (4 levels x 40 seeds) the chi2 p fell below 0.05 in 14 of 100. The
    draws keep the rates the search chose; with 199 draws p near 0.05 is known to about +-0.015, and a
    statistic of 0 gives p = 1, which shows no lack of fit, not that the law holds."""
    observed = _lack_of_fit(x, c, y, law.link, law.beta)
    p_trained = np.exp(law.likelihood.log_p(law.likelihood.X @ law.beta))
    rng = np.random.default_rng(0)  # the same data give the same p
    drawn = [_lack_of_fit(x, c, rng.random(len(y)) < p_trained, law.link, law.beta) for _ in range(draws)]
    return (1 + sum(value >= observed for value in drawn)) / (draws + 1)


def _lack_of_fit(x: np.ndarray, c: np.ndarray, y: np.ndarray, link: str, start: np.ndarray) -> float:
    """Twice the log-likelihood ratio of one free curve per level against the law (both unpenalised)."""
    law = LawFit(x, c, y, link, firth=False, start=start)
    free = 0.0
    for level in np.unique(c):
        at = c == level
        xs = x[at] - x[at].mean()
        free += Likelihood(np.column_stack([np.ones_like(xs), xs]), y[at], link, firth=False).maximum(
            np.array([0.0, -2.0]))[1]
    return max(2 * (free - law.loglik), 0.0)


def _arrays(lrs, trained, bases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, c = np.log(np.asarray(lrs, dtype=float)), np.log(np.asarray(bases, dtype=float))
    y = np.asarray(trained, dtype=bool)
    if not len(x) == len(c) == len(y) or len(y) == 0:
        raise ValueError("a law needs one rate, outcome and base per seed")
    return x, c, y


def same_curve_p(lrs, trained, levels, links: tuple[str, ...] = LINKS, draws: int | None = None) -> float:
    """p of the test that every level (warm-up steps, say: levels with no law between them) shares
    one curve, against one location per level with the slope shared (L - 1 more parameters; so it
    has no power against a change of slope alone, and not rejecting is not "the same curve"): twice
    the plain log-likelihood ratio, its p by parametric bootstrap from the shared curve's penalised
    fit (`draws`, default FIT_DRAWS), as `fit_p` and for its reason. lrs, trained, levels: per seed."""
    x, _, y = _arrays(lrs, trained, np.ones(len(lrs)))
    level = np.unique(np.asarray(levels), return_inverse=True)[1]
    if level.max() < 1 or y.all() or not y.any():
        return math.nan
    x = x - x.mean()
    shared = np.column_stack([np.ones_like(x), x])
    apart = np.column_stack([np.eye(level.max() + 1)[level], x])
    fits = [(link, Likelihood(shared, y, link).maximum(np.array([0.0, -2.0]))) for link in links]
    link, (beta, _) = max(fits, key=lambda fit: fit[1][1])
    p_trained = np.exp(Likelihood(shared, y, link).log_p(shared @ beta))

    def statistic(outcomes: np.ndarray) -> float:
        one = Likelihood(shared, outcomes, link, firth=False).maximum(beta)[1]
        each = Likelihood(apart, outcomes, link, firth=False).maximum(
            np.concatenate([np.full(level.max() + 1, beta[0]), beta[1:]]))[1]
        return max(2 * (each - one), 0.0)

    observed, rng = statistic(y), np.random.default_rng(0)
    drawn = [statistic(rng.random(len(y)) < p_trained) for _ in range(FIT_DRAWS if draws is None else draws)]
    return (1 + sum(value >= observed for value in drawn)) / (len(drawn) + 1)
