"""The edge as a dose-response curve: P(a seed trains | lr), fitted to every seed of every probe of a
setting, with the learning rates at which half and 90% of seeds train and their 95% intervals.

The model: link(P(trained)) = link(p) + slope * (log(lr) - log(lr_p)), with link logit or probit
(the one with the larger penalised likelihood is kept; both have two parameters), log the natural
logarithm, and `slope` per unit of log lr (negative where a larger rate trains less often). lr_p is
the rate at which a share p of seeds trains.

The fit maximises Firth's penalised likelihood (the log-likelihood plus half the log-determinant
of the Fisher information, Jeffreys' prior): in one exploratory simulation during development
(48 seeds on 6 rates of a logistic curve, 200 repetitions, not kept in the repository) the plain
maximum-likelihood interval for lr90, an extreme quantile, covered the true rate less often than
nominal and the penalised one closer to it; and the penalised fit stays finite where the outcomes
are separated (no trained seed above a failed one: `separated` says so, and the slope then rests on
the penalty). Intervals are profile-likelihood intervals of that penalised likelihood (Heinze and
Schemper 2002): each end is where the profile (maximised over the slope) falls chi2_1(0.95) / 2 =
1.92 below its maximum, searched between the maximum and a limit beyond the rates tried. They need
no standard error, and give an open end (NaN) where the data cannot bound the rate. A setting whose
seeds all trained (or all failed) has no curve: its rates are NaN. Coverage on known curves under
both ways of choosing the rates is measured by `study.edge_simulation` (README, *The edge as a curve*).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy  # its submodules load on first use: a worker that never fits pays nothing

LINKS = ("logit", "probit")
LEVEL = 0.95
MAX_SLOPE = 60.0  # per unit of log lr: P from 0.9 to 0.1 within about 8% of lr (logit), 4% (probit): a step
SEARCH_MARGIN = math.log(8.0)  # how far beyond the rates tried an interval may reach before it is open


@dataclass(frozen=True)
class Curve:
    """A setting's fitted curve; rates in the units of lr, NaN where an interval end is open."""

    link: str
    lr50: float
    lr50_low: float
    lr50_high: float
    lr90: float
    lr90_low: float
    lr90_high: float
    slope: float
    n: int  # seeds
    k: int  # seeds that trained
    separated: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def lr90_ratio(self) -> float:
        """The width of lr90's interval as upper / lower (NaN while open): the precision asked for."""
        return self.lr90_high / self.lr90_low


def link_of(name: str):
    """(link function, log P, log(1 - P), log dP/deta) as functions of the linear predictor."""
    if name == "logit":
        return (scipy.special.logit, scipy.special.log_expit, lambda eta: scipy.special.log_expit(-eta),
                lambda eta: scipy.special.log_expit(eta) + scipy.special.log_expit(-eta))
    norm = scipy.stats.norm
    return norm.ppf, norm.logcdf, lambda eta: norm.logcdf(-eta), norm.logpdf


class Profile:
    """Log-likelihood of outcomes `trained` at log rates `x`, profiled over the slope, for the rate
    at which a share `p` trains under link `link`."""

    def __init__(self, x: np.ndarray, trained: np.ndarray, p: float, link: str):
        self.x, self.trained, self.failed = x, trained.astype(float), 1.0 - trained
        g, self.log_p, self.log_q, self.log_density = link_of(link)
        self.offset = float(g(p))

    def loglik(self, log_rate: float, slope: float) -> float:
        eta = self.offset + slope * (self.x - log_rate)
        log_p, log_q = self.log_p(eta), self.log_q(eta)
        # Firth's penalty, half the log-determinant of the Fisher information of (intercept, slope).
        weight = np.exp(2 * self.log_density(eta) - log_p - log_q)
        s0, s1, s2 = weight.sum(), weight @ self.x, weight @ (self.x * self.x)
        penalty = 0.5 * math.log(max(s0 * s2 - s1 * s1, 1e-300))
        return float(self.trained @ log_p + self.failed @ log_q) + penalty

    def best_slope(self, log_rate: float) -> tuple[float, float]:
        """(slope, log-likelihood) maximised over the slope, at `log_rate`: concave in the slope."""
        found = scipy.optimize.minimize_scalar(lambda b: -self.loglik(log_rate, b), bounds=(-MAX_SLOPE, MAX_SLOPE),
                                               method="bounded", options={"xatol": 1e-4})
        return float(found.x), -float(found.fun)

    def __call__(self, log_rate: float) -> float:
        return self.best_slope(log_rate)[1]


def fit_curve(lrs, trained, links: tuple[str, ...] = LINKS) -> Curve:
    """The curve through per-seed outcomes: `lrs` the rate each seed ran at, `trained` whether it trained."""
    return _fit_curve(tuple(map(float, lrs)), tuple(map(bool, trained)), tuple(links))


# The driver's next rate, the edge table and its pictures each fit a setting's outcomes: fitted once.
@functools.lru_cache(maxsize=4096)
def _fit_curve(lrs: tuple[float, ...], trained: tuple[bool, ...], links: tuple[str, ...]) -> Curve:
    x = np.log(np.asarray(lrs, dtype=float))
    y = np.asarray(trained, dtype=bool)
    if len(x) == 0:
        raise ValueError("no seeds to fit")
    if y.all() or not y.any():  # nothing places the curve: only that it lies beyond the rates tried
        return Curve("", *[math.nan] * 7, n=len(y), k=int(y.sum()), separated=False)
    fits = {link: Fit(x, y, link) for link in links}
    best = max(fits.values(), key=lambda fit: fit.loglik)
    # The interval of the kept link widened to the other's: which link holds is itself uncertain.
    ends = [_union([fit.interval90() for fit in fits.values()]), _union([fit.interval50() for fit in fits.values()])]
    (low90, high90), (low50, high50) = ends
    return Curve(link=best.link, lr50=_rate(best.log50), lr50_low=_rate(low50), lr50_high=_rate(high50),
                 lr90=_rate(best.log90), lr90_low=_rate(low90), lr90_high=_rate(high90), slope=best.slope,
                 n=int(len(y)), k=int(y.sum()), separated=bool(x[y].max() <= x[~y].min()))


class Fit:
    """One link's maximum and its profiles for lr90 and lr50."""

    def __init__(self, x: np.ndarray, y: np.ndarray, link: str):
        self.x, self.link = x, link
        self.profile90, self.profile50 = Profile(x, y, 0.9, link), Profile(x, y, 0.5, link)
        self.log90, self.loglik = _maximum(self.profile90, x)
        self.slope = self.profile90.best_slope(self.log90)[0]
        shift = self.profile90.offset - self.profile50.offset
        self.log50 = self.log90 - shift / self.slope if self.slope != 0 else math.nan

    def interval90(self) -> tuple[float, float]:
        return _interval(self.profile90, self.log90, self.loglik, self.x)

    def interval50(self) -> tuple[float, float]:
        if not math.isfinite(self.log50):
            return math.nan, math.nan
        return _interval(self.profile50, self.log50, self.loglik, self.x)


def _union(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """The smallest interval holding all of `intervals`; an open (NaN) end anywhere stays open."""
    lows, highs = [low for low, _ in intervals], [high for _, high in intervals]
    return (math.nan if any(map(math.isnan, lows)) else min(lows),
            math.nan if any(map(math.isnan, highs)) else max(highs))


def _maximum(profile: Profile, x: np.ndarray) -> tuple[float, float]:
    """The maximising log rate and the maximum, searched over the rates tried and a margin each side:
    a coarse grid first (the profile may be flat where outcomes are separated), then refined."""
    grid = np.linspace(x.min() - SEARCH_MARGIN, x.max() + SEARCH_MARGIN, 97)
    values = [profile(v) for v in grid]
    best = int(np.argmax(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = scipy.optimize.minimize_scalar(lambda v: -profile(v), bounds=(low, high), method="bounded",
                                           options={"xatol": 1e-5})
    return (float(found.x), -float(found.fun)) if -found.fun >= values[best] else (float(grid[best]), values[best])


def _interval(profile: Profile, centre: float, maximum: float, x: np.ndarray) -> tuple[float, float]:
    """The crossing where the profile falls chi2_1(LEVEL)/2 below `maximum`, between `centre` and a limit
    SEARCH_MARGIN beyond the rates tried, on each side; NaN where it does not fall that far."""
    drop = scipy.stats.chi2.ppf(LEVEL, 1) / 2
    inside = lambda v: profile(v) - (maximum - drop)  # noqa: E731  (> 0 inside the interval)
    ends, limits = [], (x.min() - SEARCH_MARGIN, x.max() + SEARCH_MARGIN)
    centre_inside = limits[0] < centre < limits[1] and inside(centre) > 0
    for limit in limits:
        if not centre_inside or inside(limit) > 0:
            ends.append(math.nan)  # the data do not bound the rate on this side
        else:
            ends.append(scipy.optimize.brentq(inside, min(centre, limit), max(centre, limit), xtol=1e-5))
    return ends[0], ends[1]


def _rate(log_rate: float) -> float:
    return math.exp(log_rate) if math.isfinite(log_rate) else math.nan
