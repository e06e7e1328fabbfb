"""Library chatter that initstudy says in its own words, silenced for one command or call.

Entry points only (`study.cli.main`, the functions of `study.api`, a worker process's share): no
module changes a log level or a warning filter when imported, and each call leaves them as it found
them.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # Optuna imports tqdm.auto, which warns in a notebook without ipywidgets; initstudy's bars are plain text.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import optuna

        # Trials are asked and told by `study.runner`, their heartbeats kept by `study.schedule.Heartbeats`;
        # artifacts and heartbeats are Optuna's experimental features.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        verbosity = optuna.logging.get_verbosity()
        # ERROR: Optuna's "Trial N failed" warning carries a traceback; the command line says it in one line.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)
