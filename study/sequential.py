"""The sequential test of the edge search: is a setting reliable at a learning rate, seed by seed?

`Sprt` is Wald's sequential probability ratio test between "trains for at least `reliable` of seeds"
(p1) and "at most `unreliable`" (p0), with error rates `error` each way, truncated at `max_seeds`
(then `undecided`). Wald's bounds: the probability of calling a setting with p >= p1 unreliable is
at most error / (1 - error), and likewise for calling one with p <= p0 reliable; truncation only
turns some decisions into `undecided`, so the bounds hold for it too. `operating_characteristic`
computes the exact probabilities; tests/test_sequential.py checks both by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RELIABLE, UNRELIABLE, UNDECIDED = "reliable", "unreliable", "undecided"


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
