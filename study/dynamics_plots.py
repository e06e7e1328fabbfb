"""A dynamics study's picture: per seed, the ratio lr x lambda_max / (2 (1 + momentum)) and the
loss along the measured steps, coloured by the seed's outcome, one column per setting and rate."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from study import axes
from study.axes import describe_setting
from study.dynamics_tables import OUTCOMES

COLOURS = dict(zip(OUTCOMES, ("tab:green", "tab:olive", "tab:red", "tab:grey")))


def dynamics_figure(steps: pd.DataFrame, outcomes: pd.DataFrame) -> Figure:
    """steps: `dynamics_tables.step_frame`; outcomes: `dynamics_tables.outcome_frame`."""
    settings = list(outcomes.groupby(list(axes.NAMES), sort=True).groups)
    fig = Figure(figsize=(max(6.0, 3.6 * len(settings)), 6.4), layout="constrained")
    panels = fig.subplots(2, max(1, len(settings)), squeeze=False, sharex="col")
    for column, setting in enumerate(settings):
        values = dict(zip(axes.NAMES, setting))
        mine = steps[(steps[list(axes.NAMES)] == pd.Series(values)).all(axis=1)]
        seeds = outcomes[(outcomes[list(axes.NAMES)] == pd.Series(values)).all(axis=1)].set_index("seed")["outcome"]
        for seed, group in mine.groupby("seed"):
            colour = COLOURS[seeds[seed]]
            panels[0, column].plot(group["step"], group["ratio"], "o-", ms=3, color=colour, alpha=0.8)
            panels[1, column].plot(group["step"], group["loss"], "o-", ms=3, color=colour, alpha=0.8)
        panels[0, column].axhline(1.0, color="black", linestyle=":", linewidth=0.8)
        panels[0, column].set_title(describe_setting(values).replace(", lr", "\nlr"), fontsize=7)
        panels[1, column].set_xlabel("optimiser step")
        panels[1, column].xaxis.set_major_locator(MaxNLocator(integer=True))
        for row in (0, 1):
            panels[row, column].set_yscale("log")
            # Ticks at 1, 2, 5 per decade: a panel within one decade still gets numbers.
            panels[row, column].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            panels[row, column].yaxis.set_major_formatter(FormatStrFormatter("%g"))
            panels[row, column].yaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a log axis
    panels[0, 0].set_ylabel("lr x lambda_max / (2 (1 + mu))")
    panels[1, 0].set_ylabel("training loss (the step's batch)")
    for outcome, colour in COLOURS.items():
        panels[0, 0].plot([], [], color=colour, label=f"{outcome} ({int((outcomes['outcome'] == outcome).sum())})")
    panels[0, 0].legend(fontsize=7, title="seed's outcome", title_fontsize=7)
    fig.suptitle("The first steps of each seed\n(above the dotted line a step is beyond the quadratic bound)",
                 fontsize=9)
    return fig
