"""An adaptive design for the edge: where to train a setting's next round of seeds so that its lr90
is known most precisely: the Psi-marginal method of psychophysics (Prins 2013, after Kontsevich and
Tyler 1999's Psi), the slope a nuisance parameter, on a grid.

The posterior over (log lr90, slope) of the logistic curve of `study.dose_response` lives on a
grid, its prior uniform in log lr90 (across the searched range and a margin) and in log |slope|
(slope from -1 to -30 per unit of log lr, log-spaced; the lesson grid's curves measured -4.4 to
-5.5). Each round trains `round_seeds` seeds
at one rate; the rate is the candidate (log-spaced over the range, continuous for any purpose)
whose outcome, 0 to `round_seeds` trained, leaves the least expected entropy of lr90's marginal
posterior. A setting is done when the profile-likelihood interval of the fitted curve
(`dose_response.fit_curve`, the interval reported) is narrower than `precision` (upper / lower), or
when it has used `max_trainings`. The fit runs only once the posterior's own 95% interval is that
narrow: it costs a tenth of a second, the posterior microseconds.

Rates, seeds and outcomes come from the stored probes, so a re-run or another machine continues
where the study stands; the grid and the choice are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy  # its submodules load on first use: a worker that never fits pays nothing

from study.dose_response import Curve, fit_curve

RATE_GRID, SLOPE_GRID, CANDIDATES = 97, 16, 49
MARGIN = math.log(2.0)  # lr90 may lie this far (a factor 2) outside the searched range
SLOPES = -np.geomspace(1.0, 30.0, SLOPE_GRID)


@dataclass(frozen=True)
class AdaptiveDesign:
    """The adaptive method's settings: the range of rates, the precision asked for, the budget."""

    low: float
    high: float
    precision: float = 1.6
    max_trainings: int = 60
    round_seeds: int = 4

    def next_step(self, lrs, trained) -> tuple[float | None, Curve | None]:
        """(the rate of the next round, or None when the setting is done; the fitted curve where one
        was fitted) from a setting's outcomes so far: `lrs` each seed's rate, `trained` its outcome."""
        lrs, trained = np.asarray(lrs, dtype=float), np.asarray(trained, dtype=bool)
        posterior = Posterior(self.low, self.high)
        posterior.update(lrs, trained)
        curve = None
        if len(lrs) and posterior.lr90_ratio() <= self.precision:
            curve = fit_curve(lrs, trained)
            if curve.lr90_ratio() <= self.precision:
                return None, curve
        if len(lrs) + self.round_seeds > self.max_trainings:
            return None, curve or (fit_curve(lrs, trained) if len(lrs) else None)
        return posterior.best_rate(self.round_seeds), curve


class Posterior:
    """The grid posterior over (log lr90, slope), uniform in log lr90 and log |slope| to start."""

    def __init__(self, low: float, high: float):
        self.log_rates = np.linspace(math.log(low) - MARGIN, math.log(high) + MARGIN, RATE_GRID)
        self.candidates = np.linspace(math.log(low), math.log(high), CANDIDATES)
        self.log_post = np.zeros((RATE_GRID, SLOPE_GRID))

    def _eta(self, x: np.ndarray) -> np.ndarray:
        """The linear predictor at log rates `x`: shape (rates, slopes, len(x))."""
        return scipy.special.logit(0.9) + SLOPES[None, :, None] * (x[None, None, :] - self.log_rates[:, None, None])

    def update(self, lrs: np.ndarray, trained: np.ndarray) -> None:
        if not len(lrs):
            return
        eta = self._eta(np.log(lrs))
        self.log_post += np.where(trained, scipy.special.log_expit(eta), scipy.special.log_expit(-eta)).sum(axis=2)

    def _normalised(self) -> np.ndarray:
        return np.exp(self.log_post - scipy.special.logsumexp(self.log_post))

    def lr90_ratio(self) -> float:
        """Upper / lower end of lr90's central 95% posterior interval."""
        cdf = np.cumsum(self._normalised().sum(axis=1))
        low, high = np.searchsorted(cdf, 0.025), np.searchsorted(cdf, 0.975)
        return math.exp(self.log_rates[min(high, RATE_GRID - 1)] - self.log_rates[low])

    def best_rate(self, seeds: int) -> float:
        """The candidate rate whose `seeds` outcomes leave the least expected entropy of lr90's marginal."""
        post = self._normalised()
        p = scipy.special.expit(self._eta(self.candidates))  # (rates, slopes, candidates)
        ks = np.arange(seeds + 1)
        # P(k trained of `seeds` | rate, slope, candidate): (rates, slopes, candidates, k)
        likelihood = scipy.special.comb(seeds, ks) * p[..., None] ** ks * (1 - p[..., None]) ** (seeds - ks)
        joint = post[:, :, None, None] * likelihood
        marginal = joint.sum(axis=1)  # over slopes: (rates, candidates, k)
        predictive = marginal.sum(axis=0)  # (candidates, k)
        conditional = marginal / np.maximum(predictive[None], 1e-300)
        entropy = -(conditional * np.log(np.maximum(conditional, 1e-300))).sum(axis=0)  # (candidates, k)
        expected = (predictive * entropy).sum(axis=1)
        return float(math.exp(self.candidates[int(np.argmin(expected))]))
