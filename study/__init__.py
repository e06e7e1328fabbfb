"""initstudy: which weight initialisations and GeneralRelu shapes train, and how reliably across seeds.

    import study
    s = study.search(name="nb", leak=(0, .1, .2), sub=(0, .4), seeds=(0, 1, 2), model="mlp")
    s.frame()                   # pandas: one row per setting x seed
    s.heatmap("frac_trained")   # a matplotlib Figure
    study.train(model="cnn", leak=.1, sub=.4, seed=0)
    study.load("quick")         # a stored study
    study.create("big", storage=url, leak=(0, .1), model="mlp")   # store a design; then on each machine:
    study.work("big", storage=url, workers="auto")                 # join it, the design read from storage
    e = study.edge("e", leak=(0, .1), sub=(0, .4), lr=(0.1, 0.2, 0.4), model="mlp")
    e.table()                   # pandas: the largest stable learning rate of each setting
    e.save("out")               # edge.csv and its pictures, as `python -m study edge` writes them
    study.sharpness(model="mlp", leak=.1, sub=.4, seeds=(0, 1), steps=5)   # pandas: lambda_max per step
    d = study.dynamics(leak=(0,), sub=(0,), lr=(0.2,), seeds=(0, 1), steps=6, model="mlp")
    d.steps(), d.outcomes()     # pandas: each seed's first steps; its outcome (trained, catapult, ...)
    study.signal(depth=30)      # pandas: signal propagation against the mean-field prediction
    study.findings(quick=True)  # runs the findings studies, writes findings.md

See `study.api` for the keywords; `python -m study --help` for the command line.
"""

import importlib
from typing import TYPE_CHECKING

from study.version import __version__  # noqa: F401

# Where each public name lives, imported on first use (PEP 562): a worker process imports only
# `study.runner` and what it needs, not the statistics this face pulls in (scipy, statsmodels: a
# second of every worker's start-up).
_HOMES = {
    **dict.fromkeys(["Dynamics", "Edge", "Study", "create", "dynamics", "edge", "findings", "load", "search",
                     "sharpness", "signal", "train", "work"], "study.api"),
    "Range": "study.axes",
    **dict.fromkeys(["BadInput", "FieldError", "Interrupted", "StorageFault"], "study.errors"),
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # what editors and type checkers see
    from study.api import (Dynamics, Edge, Study, create, dynamics, edge, findings, load, search, sharpness,
                           signal, train, work)
    from study.axes import Range
    from study.errors import BadInput, FieldError, Interrupted, StorageFault


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'study' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
