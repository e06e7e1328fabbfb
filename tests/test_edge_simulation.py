"""The edge's methods on known curves (`study.edge_simulation`): the fitted interval's coverage in a
test with a fixed seed, and the bisection's simulation against the rule it simulates. The README's
table is `python -m study bench edge` (more repetitions)."""

import math

import numpy as np
import pytest

from study.edge_simulation import KnownCurve, run_bisection, simulate, summary
from study.ladder import EdgeDesign


def test_the_simulated_bisection_finds_a_steep_curves_edge_between_its_rungs():
    design = EdgeDesign(method="bisect")
    ladder = design.ladder()
    lrs, trained, edge = run_bisection(KnownCurve(0.24, -60.0), design, np.random.default_rng(0))
    assert edge == max(rate for rate in ladder if rate < 0.24 * 0.9)  # a step: reliable below, not above
    assert len(lrs) == len(trained) and set(lrs) <= set(ladder)


@pytest.mark.slow
def test_the_adaptive_methods_interval_covers_lr90_at_least_93_percent_of_the_time():
    frame = simulate([KnownCurve(0.24, -5.0), KnownCurve(0.6, -4.4)], reps=75, seed=0, methods=("adaptive",))
    assert frame["covered"].mean() >= 0.93, summary(frame)
    table = summary(frame)
    assert (table["trainings"] <= 60).all() and (table["ratio_median"] <= 1.7).all(), table
    assert math.isclose(table["reps"].sum(), 150)
