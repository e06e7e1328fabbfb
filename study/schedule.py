"""Which trial runs next: the grid's order, requeueing what failed, the samplers, and heartbeats.

A trial's setting is its point (a value per axis, `study.axes`). Grid points are enqueued in a fixed
shuffled order; a FAIL trial's setting is queued again (at most MAX_FAILS_PER_SETTING times), so a
crash or Ctrl-C loses nothing but the seeds in flight. While a worker trains, `Heartbeats` keeps its
trials alive; a worker killed mid-trial goes silent, and its trials are failed and retried.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from itertools import product

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import axes
from study.axes import Range
from study.design import StudyDesign
from study.records import fixed_values, point, point_of

MAX_FAILS_PER_SETTING = 3  # a setting that failed this often (a bug, not a crash) is not retried again
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def grid_points(design: StudyDesign) -> list[dict[str, float]]:
    """Every grid point, in a fixed shuffled order so that a partial grid covers the space evenly."""
    points = [dict(zip(axes.NAMES, values)) for values in product(*design.spaces().values())]
    random.Random(0).shuffle(points)
    return points


def requeue(study: optuna.Study, design: StudyDesign) -> int:
    """Queue the settings the study still needs and no live (COMPLETE, RUNNING, WAITING) trial holds,
    as many as the target leaves room for. Returns how many were queued.

    Grid: every grid point (in `grid_points` order). Other samplers: the settings of FAIL trials,
    so a crashed or interrupted trial is retried with the same setting. Optuna's GridSampler would
    count FAIL trials as visited; this retries them. A setting that failed MAX_FAILS_PER_SETTING
    times is not queued again.
    """
    trials, fixed = study.get_trials(deepcopy=False), fixed_values(study)
    live = [t for t in trials if t.state in LIVE]
    held = {point_of(t, fixed) for t in live}
    fails = Counter(point_of(t, fixed) for t in trials if t.state == TrialState.FAIL)
    if design.sampler == "grid":
        candidates = [point(p) for p in grid_points(design)]
    else:
        # A trial killed before its setting was sampled has no point to retry.
        candidates = list(dict.fromkeys(point_of(t, fixed) for t in trials
                                        if t.state == TrialState.FAIL and None not in point_of(t, fixed)))
    missing = [p for p in candidates if p not in held and fails[p] < MAX_FAILS_PER_SETTING]
    wanted = missing[:max(design.target_trials() - len(live), 0)]
    for setting in wanted:
        study.enqueue_trial(dict(zip(axes.NAMES, setting)))
    return len(wanted)


def ask_queued(study: optuna.Study) -> optuna.Trial | None:
    """`Study.ask` for a study whose every trial is queued (a grid's, an edge search's): the next
    queued trial, or None where another worker took the last. `ask` would create a fresh trial then,
    with no setting of its own, which the worker could only prune. Optuna has no public name for
    the queue's pop, which `ask` itself calls (5.0), nor for its cache, which `ask` clears first."""
    study._thread_local.cached_all_trials = None
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def held_elsewhere(trial: optuna.Trial, identity: Callable[[FrozenTrial], Hashable], always: bool = True) -> bool:
    """Whether a COMPLETE trial, or a RUNNING one that started first, has this trial's identity
    (`identity` of a stored trial: its setting, or an edge probe's setting and seeds). `always`
    False: only a trial queued with its params (a grid point or a retry) must be unique; a sampler
    may choose to repeat a setting."""
    trials = trial.study.get_trials(deepcopy=False)
    this = next(t for t in trials if t.number == trial.number)
    if not always and "fixed_params" not in this.system_attrs:
        return False
    mine = identity(this)
    return any(identity(t) == mine and (t.state == TrialState.COMPLETE or
                                        (t.state == TrialState.RUNNING and t.number < trial.number))
               for t in trials if t.number != trial.number)


def fail_stale_and_requeue(study: optuna.Study, design: StudyDesign) -> Counter:
    """Fail the trials whose worker went silent, queue what the study still needs; the trial states."""
    optuna.storages.fail_stale_trials(study)
    requeue(study, design)
    return count_states(study)


def count_states(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def n_complete(study: optuna.Study) -> int:
    return count_states(study)[TrialState.COMPLETE]


def suggest(trial: optuna.Trial, design: StudyDesign) -> dict[str, float]:
    params = {}
    for name, space in design.spaces().items():
        if isinstance(space, Range) and axes.BY_NAME[name].integer:
            params[name] = trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
        elif isinstance(space, Range):
            params[name] = trial.suggest_float(name, space.low, space.high, log=space.log)
        else:
            params[name] = trial.suggest_categorical(name, list(space))
    return params


class Heartbeats:
    """While training, a heartbeat for each trial at the storage's heartbeat interval, as
    Study.optimize keeps for its one trial: when this worker is killed, its trials go stale and are
    failed and retried. Nothing where the storage keeps no heartbeats."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: list[int]):
        self.storage, self.trial_ids = storage, trial_ids
        self.interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self.enabled = self.interval is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> "Heartbeats":
        if self.enabled:
            self.beat()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One heartbeat for each trial now (where the storage keeps them)."""
        if self.enabled:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)


def make_sampler(design: StudyDesign) -> optuna.samplers.BaseSampler:
    # Grid points are enqueued (enqueue_missing_grid_points), so the sampler of a grid study is
    # never asked; random/TPE are left unseeded so a resumed study does not replay its first draws.
    if design.sampler == "tpe":
        return optuna.samplers.TPESampler(multivariate=True)
    if design.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=0)  # indexed by trial number: resumes continue the sequence
    return optuna.samplers.RandomSampler()
