"""What a study is (`StudyDesign`) and how this machine runs it (`MachineConfig`); where it is kept
is `study.place.StudyPlace`.

The design decides the results: it is stored in the study and compared, whole, when the study is
continued. The machine side may differ from worker to worker (four workers on one machine, one per
GPU on another) and is never stored. Values are typed (tuples of floats, `Range`, integers); the
command line turns its strings into them in one place (`study/cli.py`). Each class checks itself on
construction and raises `FieldError`, which names the field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields

from study import axes
from study.version import __version__
from study.axes import Range, check_space, space_fields, upgrade_space
from study.config import NOT_DESIGN, RunConfig, TrainConfig, check_choices, describe
from study.errors import FieldError

SAMPLERS = ("grid", "tpe", "random", "qmc")
OBJECTIVES = ("accuracy", "stability")
AUTO_POPULATION_MODELS = 32  # models per population that population="auto" aims for on CUDA
DEFAULT_OTHER_SAMPLER_TRIALS = 30  # a study of a non-grid sampler stops here unless told otherwise
STORAGE_RETRY_SECONDS = 180  # rides out a server restart or failover; past it the command stops, resumable
CONFIG_ATTR = "initstudy_config"  # the study user attribute that holds a study's design
TRAIN_THRESHOLD = 0.5  # chance is 0.1; a run below 0.5 after training has not learnt the task
CATAPULT_FACTOR = 2.0  # a loss above twice its start that comes back: the catapult of Lewkowycz et al. 2020


@dataclass(frozen=True)
class Design:
    """What every design has, a search's (`StudyDesign`) and an edge search's (`study.ladder.EdgeDesign`):
    a space per axis (the fields `study.axes.space_fields` gives each), checked here against the
    axis's bounds, and the accuracy above which a seed counts as trained."""

    train_threshold: float = field(
        default=TRAIN_THRESHOLD,
        metadata=describe("validation accuracy above which a seed counts as trained"))

    def __post_init__(self):
        for name in axes.NAMES:
            object.__setattr__(self, name, check_space(name, getattr(self, name)))
        if not 0 < self.train_threshold < 1:
            raise FieldError("train_threshold", f"must be in (0, 1), got {self.train_threshold:g}")

    def spaces(self) -> dict[str, axes.Space]:
        """Each axis's space: what a trial's params are drawn from."""
        return {name: getattr(self, name) for name in axes.NAMES}


@dataclass(frozen=True)
@space_fields()  # one per axis: study/axes.py
class StudyDesign(Design):
    """Everything a study's results depend on besides the run configuration (`RunConfig`)."""

    seeds: tuple[int, ...] = field(default=(0, 1, 2),
                                   metadata=describe("seeds each setting is trained with, comma separated"))
    sampler: str = field(default="grid", metadata=describe("how settings are chosen", choices=SAMPLERS))
    objective: str = field(
        default="accuracy",
        metadata=describe("accuracy: mean validation accuracy; stability: (mean, seed std), a Pareto front",
                          choices=OBJECTIVES))
    n_trials: int | None = field(
        default=None,
        metadata=describe("the study's target number of COMPLETE trials; re-running continues to it "
                          "(default: the grid size, or 30 for other samplers)"))

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "seeds", _distinct_indices("seeds", self.seeds))
        check_choices(self)
        if self.n_trials is not None and self.n_trials < 1:
            raise FieldError("n_trials", f"must be >= 1, got {self.n_trials}")
        if self.sampler == "grid":
            ranged = [name for name in axes.NAMES if isinstance(getattr(self, name), Range)]
            if ranged:
                raise FieldError(ranged[0], "is a range, but the grid sampler needs lists: list its values")
            if self.n_trials is not None and self.n_trials > self.grid_size():
                raise FieldError("n_trials", f"{self.n_trials} exceeds the grid's {self.grid_size()} points")

    def stored(self) -> dict:
        """The design's part of the stored configuration (`study_config`)."""
        return {
            "space": {name: axes.describe_space(space) for name, space in self.spaces().items()},
            "sampler": self.sampler,
            "objective": self.objective,
            "seeds": list(self.seeds),
            "train_threshold": self.train_threshold,
        }

    def grid_size(self) -> int:
        return math.prod(len(space) for space in self.spaces().values())

    def target_trials(self) -> int:
        if self.n_trials is not None:
            return self.n_trials
        return self.grid_size() if self.sampler == "grid" else DEFAULT_OTHER_SAMPLER_TRIALS


@dataclass(frozen=True)
class DynamicsDesign(StudyDesign):
    """A grid study whose seeds are measured along their first `steps` and classed by outcome
    (`study.experiments.dynamics`): the settings' and rates' lists, the seeds, and the measurement."""

    steps: int = field(default=6, metadata=describe("optimiser steps measured from the start of each seed"))
    catapult_factor: float = field(
        default=CATAPULT_FACTOR,
        metadata=describe("a seed that trained after its loss rose above this many times its first loss is a catapult"))

    def __post_init__(self):
        super().__post_init__()
        if self.sampler != "grid":
            raise FieldError("sampler", "dynamics trains every setting and rate given: the grid sampler only")
        if self.steps < 1:
            raise FieldError("steps", f"must be >= 1, got {self.steps}")
        if not 1 < self.catapult_factor < math.inf:
            raise FieldError("catapult_factor", f"must be a finite number above 1, got {self.catapult_factor:g}")

    def stored(self) -> dict:
        return {**super().stored(), "dynamics": {"steps": self.steps, "catapult_factor": self.catapult_factor}}


@dataclass(frozen=True)
class MachineConfig:
    """How this machine runs a study; never stored, so each worker may set its own."""

    workers: int | str = field(
        default=1,
        metadata=describe("worker processes on this study on this machine: a number, or auto (one per CPU core "
                          "when training on the CPU, each with one thread: ~1.3x the runs per second of one "
                          "process with all cores on 2 cores, measured)"))
    gpus: tuple[int, ...] | None = field(
        default=None, metadata=describe("comma-separated GPU indices: one worker per GPU, e.g. 0,1,2,3"))
    population: int | str = field(
        default="auto",
        metadata=describe("settings trained together in one batched pass (each with all its seeds): a number, "
                          "off, or auto (on CUDA enough settings for 32 models; off on the CPU, where batching "
                          "measured no faster)"))
    heartbeat_seconds: int = field(
        default=10,  # one small UPDATE per worker every 10 s
        metadata=describe("how often a running trial says it is alive"))
    grace_seconds: int = field(
        default=60,  # a killed worker's trial is failed and retried about a minute later
        metadata=describe("a RUNNING trial silent this long is failed and its setting retried"))
    storage_retry_seconds: int = field(
        default=STORAGE_RETRY_SECONDS,
        metadata=describe("how long a running study retries a database server that does not answer"))
    artifacts: str | None = field(
        default=None,
        metadata=describe("where the per-seed pictures go, the same store on every machine: a directory "
                          "(a shared one for many machines) or s3://bucket[/prefix] (needs boto3); "
                          "default: studies/NAME/artifacts beside the study"))

    def __post_init__(self):
        if self.workers != "auto" and not (isinstance(self.workers, numbers.Integral) and self.workers >= 1):
            raise FieldError("workers", f"must be a number >= 1 or auto, got {self.workers}")
        if self.gpus is not None:
            object.__setattr__(self, "gpus", _distinct_indices("gpus", self.gpus))
        if self.population not in ("auto", "off") and not (isinstance(self.population, numbers.Integral)
                                                           and self.population >= 1):
            raise FieldError("population", f"must be a number of settings >= 1, off or auto, got {self.population}")
        if self.heartbeat_seconds < 1:
            raise FieldError("heartbeat_seconds", f"must be >= 1, got {self.heartbeat_seconds}")
        if self.storage_retry_seconds < 0:
            raise FieldError("storage_retry_seconds", f"must be >= 0, got {self.storage_retry_seconds}")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise FieldError("grace_seconds", f"({self.grace_seconds}) must exceed `heartbeat_seconds` "
                                              f"({self.heartbeat_seconds})")

    def worker_count(self, device_type: str) -> int:
        """Worker processes for this machine: one per GPU with `gpus`; auto is one per usable core on
        the CPU, else one."""
        if self.gpus is not None:
            return len(self.gpus)
        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) if device_type == "cpu" else 1
        return self.workers

    def has_workers(self, device_type: str) -> bool:
        """Whether a study runs in worker processes (`study.workers`) rather than in this one."""
        return self.gpus is not None or self.worker_count(device_type) > 1

    def population_size(self, device_type: str, n_seeds: int) -> int:
        """Trials (settings) trained together; 1 is one trial at a time."""
        if self.population == "off":
            return 1
        if self.population == "auto":
            # 32 models keep a GPU busy where one small model leaves it launch-bound (kernels/README.md).
            return max(1, AUTO_POPULATION_MODELS // n_seeds) if device_type == "cuda" else 1
        return self.population


def _distinct_indices(name: str, values) -> tuple[int, ...]:
    """Distinct non-negative integers (seeds, GPU indices) as a tuple of ints; numpy's integers
    (`np.arange(10)`) count as integers."""
    values = (values,) if isinstance(values, numbers.Integral) else tuple(values)
    if not values or any(not isinstance(v, numbers.Integral) or v < 0 for v in values) or \
            len(set(values)) != len(values):
        raise FieldError(name, f"{','.join(map(str, values))!r}: give distinct non-negative integers like 0,1,2")
    return tuple(int(v) for v in values)


def study_config(design, run: RunConfig) -> dict:
    """What decides a study's results, whole: stored in the study and compared when it is continued.

    Every field of the run's configuration counts, except the searched ones and the seed (they are
    each trial's own) and the machine's (`config.NOT_DESIGN`: the device and the data directory,
    where a worker runs and keeps its files, not what the study is). A field added later is compared
    without a change here.
    """
    model = {k: v for k, v in asdict(run.model).items() if k not in axes.NAMES}
    optim = {k: v for k, v in asdict(run.optim).items() if k not in axes.NAMES}
    train = {k: v for k, v in asdict(run.train).items() if k not in NOT_DESIGN["train"]}
    config = {
        **design.stored(),  # a StudyDesign's, or an edge search's (`study.ladder.EdgeDesign`)
        "model": model,
        "optim": optim,
        "data": {k: v for k, v in asdict(run.data).items() if k not in NOT_DESIGN["data"]},
        "train": train,
        "code_version": __version__,
    }
    return json.loads(json.dumps(config))  # tuples as lists, as they come back from storage


def upgrade_stored_config(stored: dict) -> dict:
    """A configuration stored by an earlier initstudy in today's layout, so that its studies continue.

    0.1.0 kept `stats_every` and `diverge_loss` at the top, `dtype` only when not float32, and
    neither `backend` nor `max_steps`: those read as their defaults (0.1.0 did not compare them, so
    a 0.1.0 study run with --backend triton or --max-steps is continued only with the defaults).
    Before 0.3.0, lr and momentum were one value each in `optim`; they read as one-value axes, as
    does an axis added since, at the value studies then ran at (`study.axes.upgrade_space`).
    Before 0.4.0 every bias started at zero and `model` had no `bias_init`. Until 0.4.0 the data
    directory was stored and compared; it is where a machine keeps its files, so it is dropped.
    Before 0.5.0 an edge search had one method, bisection: its `edge` section reads as `bisect`.
    Before 0.6.0 a run diverged above an absolute loss (`diverge_loss`, 100) only: it reads with no
    relative limit (`diverge_factor` off), the rule its trials were judged by.
    """
    if not stored:
        return stored
    upgraded = dict(stored)
    if "train" not in stored:
        upgraded = {k: v for k, v in stored.items() if k not in ("stats_every", "diverge_loss", "dtype")}
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        upgraded["train"] = {
            **{k: v for k, v in defaults.items() if k not in (*NOT_DESIGN["train"], "diverge_factor")},
            "diverge_loss": 100.0,  # 0.1.0's default, when it did not store it
            **{k: stored[k] for k in ("stats_every", "diverge_loss", "dtype") if k in stored},
        }
    if "space" in upgraded:
        upgraded = upgrade_space(upgraded)
    if "model" in upgraded and "bias_init" not in upgraded["model"]:
        upgraded["model"] = {**upgraded["model"], "bias_init": "zero"}
    if "data" in upgraded:
        upgraded["data"] = {k: v for k, v in upgraded["data"].items() if k not in NOT_DESIGN["data"]}
    if "train" in upgraded and "diverge_factor" not in upgraded["train"]:
        upgraded["train"] = {**upgraded["train"], "diverge_factor": None}
    if "edge" in upgraded and "method" not in upgraded["edge"]:
        upgraded["edge"] = {"method": "bisect", **upgraded["edge"]}  # the only method before 0.5.0
    return upgraded


def fixed_axis_values(stored: dict) -> dict[str, float]:
    """The axes a stored study held at one value, and that value: what a trial that does not name
    an axis (written before the axis was searched, as lr before 0.3.0) ran at."""
    space = upgrade_stored_config(stored).get("space", {})
    return {name: float(text) for name, text in space.items() if ":" not in text and "," not in text}
