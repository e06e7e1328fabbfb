"""The edge's two methods on known curves (`study.edge_simulation`): the table in the README's *The
edge as a curve*. Each seed is a Bernoulli draw from a logistic curve of known lr90 and slope
(per unit of log lr); both methods search 0.025 to 1.6 (bisection: its 13 rungs sqrt 2 apart and
the sequential test of 0.9 against 0.6; adaptive: precision 1.6, at most 60 trainings, 4 seeds a
round), and the fitted curve's 95% interval for lr90 (`study.dose_response`) is scored.

    python -m study bench edge [--reps 200]
"""

from __future__ import annotations

import datetime
import platform

from study.edge_simulation import KnownCurve, simulate, summary
from study.experiments.findings.tables import markdown_table
from study.ladder import EdgeDesign

CURVES = (KnownCurve(0.24, -5.0), KnownCurve(0.6, -4.4), KnownCurve(0.1, -2.5))


def report(reps: int = 200, seed: int = 0) -> str:
    started = datetime.datetime.now()
    table = summary(simulate(list(CURVES), reps, seed, design=EdgeDesign(method="bisect")))
    minutes = (datetime.datetime.now() - started).total_seconds() / 60
    head = (f"{reps} repetitions per curve, seed {seed}; {started:%Y-%m-%d}, {platform.node()} "
            f"({platform.processor() or platform.machine()}), {minutes:.1f} min\n")
    return head + markdown_table(table)


if __name__ == "__main__":
    import sys

    print(report(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
