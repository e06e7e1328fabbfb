"""The trainability edge: for each setting, the largest learning rate on a ladder at which it trains
reliably across seeds.

A setting is a value on every axis but the learning rate (`study.axes`). Its ladder is a list of learning rates (rungs), given
as a list or as a log range cut into rungs a constant factor (`lr_step`) apart. The edge is found by
bisection over the rungs, on the assumption that a setting reliable at one learning rate is reliable
at every smaller one: each probe (setting, rung) is an ordinary trial of the study, to which seeds
0, 1, 2, ... are added until the sequential test (`study.reliability.Sprt`) reaches its verdict. A
rung is stable when its verdict is `reliable`; `unreliable` and `undecided` both end the search
above it. The bisection state is read from the stored probes, so a re-run continues it.

The runner's `EdgeSearch` drives the probes; this module holds the design, the ladder and the
bisection (light: the command line builds its flags from it); `study.results` reads the stored
probes into the edge table.
"""

from __future__ import annotations

import math
from itertools import product
from dataclasses import astuple, dataclass, field

from study import axes
from study.axes import Range, Space, describe_space, space_fields
from study.adaptive import AdaptiveDesign
from study.config import check_choices, describe
from study.design import Design
from study.errors import FieldError
from study.sequential import RELIABLE, Sprt

SETTING_AXES = tuple(name for name in axes.NAMES if name != "lr")  # what a setting is here: all but lr
METHODS = ("bisect", "adaptive")


@dataclass(frozen=True)
# One per axis but lr (study/axes.py). The edge grid's sub keeps its four values: edge studies made with
# the default flags before the axes were declared once continue with them.
@space_fields(skip=("lr",), ranges=False, defaults={"sub": (0.0, 0.4, 0.7, 0.9)})
class EdgeDesign(Design):
    """What an edge search's results depend on besides the run configuration: stored and compared."""

    lr: Space = field(default=Range(0.025, 1.6, log=True),
                      metadata=describe("the learning-rate ladder: rungs (0.1,0.15,0.2) or a range low:high[:log] "
                                        "cut into rungs `lr_step` apart"))
    lr_step: float = field(default=math.sqrt(2), metadata=describe("factor between rungs of a range ladder"))
    reliability: float = field(
        default=0.9, metadata=describe("a rung is stable when the test decides the setting trains for at least "
                                       "this fraction of seeds"))
    unreliability: float = field(
        default=0.6, metadata=describe("... against at most this fraction (the test's other hypothesis)"))
    error_rate: float = field(default=0.05, metadata=describe("the sequential test's error rate, each way"))
    max_seeds: int = field(default=20, metadata=describe("seeds after which an undecided probe stops"))
    method: str = field(
        default="adaptive",  # by the simulation of both (README, The edge as a curve): lr90 within x1.6
        metadata=describe("how each setting's probes are chosen: bisect (the ladder's rungs, seeds added until the "
                          "sequential test decides) or adaptive (continuous rates where lr90 is least known: "
                          "study/adaptive.py)", choices=METHODS))
    precision: float = field(
        default=1.6, metadata=describe("adaptive: a setting is done when lr90's 95% interval is this narrow "
                                       "(upper / lower)"))
    max_trainings: int = field(default=60, metadata=describe("adaptive: seeds after which a setting stops"))
    round_seeds: int = field(default=4, metadata=describe("adaptive: seeds trained at each chosen rate"))

    sampler = "grid"  # every probe is enqueued; the sampler is never asked
    objective = "accuracy"  # each probe's value: the mean validation accuracy of its seeds

    def __post_init__(self):
        super().__post_init__()
        ranged = [name for name in SETTING_AXES if isinstance(getattr(self, name), Range)]
        if ranged:
            raise FieldError(ranged[0], "is a range: an edge search takes a list of values")
        if not self.lr_step > 1 or not math.isfinite(self.lr_step):
            raise FieldError("lr_step", f"must be a factor > 1, got {self.lr_step:g}")
        if len(self.ladder()) < 2:
            raise FieldError("lr", f"{describe_space(self.lr)} gives one rung: a ladder needs two or more "
                                   "(widen the range or lower `lr_step`)")
        if not 0 < self.reliability < 1:
            raise FieldError("reliability", f"must be in (0, 1), got {self.reliability:g}")
        if not 0 < self.unreliability < self.reliability:
            raise FieldError("unreliability", f"must be in (0, `reliability`), got {self.unreliability:g}")
        if not 0 < self.error_rate < 0.5:
            raise FieldError("error_rate", f"must be in (0, 0.5), got {self.error_rate:g}")
        if self.max_seeds < 1:
            raise FieldError("max_seeds", f"must be >= 1, got {self.max_seeds}")
        check_choices(self)
        if not self.precision > 1:
            raise FieldError("precision", f"must be a ratio > 1, got {self.precision:g}")
        if self.round_seeds < 1 or self.max_trainings < self.round_seeds:
            raise FieldError("max_trainings", f"({self.max_trainings}) must hold at least one round of "
                                              f"`round_seeds` ({self.round_seeds}), and that must be >= 1")

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds a probe may use, in the order it adds them: the same for every probe, so
        settings and rungs are compared on shared seeds. Adaptive: the k-th probe of a setting
        trains seeds k x round_seeds onwards (`probe_seeds`), so no two of its probes share a seed."""
        return tuple(range(self.max_seeds if self.method == "bisect" else self.max_trainings))

    def probe_seeds(self, index: int) -> list[int]:
        """Adaptive: the seeds of a setting's probe number `index` (0, 1, ...)."""
        return list(range(index * self.round_seeds, (index + 1) * self.round_seeds))

    def adaptive(self) -> AdaptiveDesign:
        rates = (self.lr.low, self.lr.high) if isinstance(self.lr, Range) else (min(self.lr), max(self.lr))
        return AdaptiveDesign(*rates, self.precision, self.max_trainings, self.round_seeds)

    def ladder(self) -> tuple[float, ...]:
        """The rungs, ascending: the list as given, or low, low x step, ... up to high."""
        if not isinstance(self.lr, Range):
            return tuple(sorted(self.lr))
        count = math.floor(math.log(self.lr.high / self.lr.low) / math.log(self.lr_step) + 1e-9) + 1
        return tuple(float(f"{self.lr.low * self.lr_step ** i:.6g}") for i in range(count))

    def bisections(self, probes: dict[tuple, list[tuple[float, str]]]) -> dict[tuple, "Bisection"]:
        """Where each setting's search stands (by `setting_key`), from its COMPLETE probes as (lr,
        verdict) pairs (`study.records.probe_verdicts`)."""
        ladder = self.ladder()
        return {setting_key(s): bisection(rung_verdicts(ladder, probes.get(setting_key(s), [])), len(ladder))
                for s in self.settings()}

    def seeds_to_train(self, trained: dict[int, bool]) -> list[int]:
        """The seeds a probe trains next, given whether each seed it holds trained: none once the test
        has decided; else the fewest further seeds that could decide it, lowest first among those it
        lacks (`seeds`), so that every probe draws the same seeds in the same order."""
        test, k, n = self.test(), sum(trained.values()), len(trained)
        if test.verdict(k, n):
            return []
        return [seed for seed in self.seeds if seed not in trained][:test.seeds_to_verdict(k, n)]

    def describe_method(self) -> str:
        """How the probes are chosen, in two lines for the command line."""
        if self.method == "bisect":
            return f"ladder: {', '.join(f'{lr:g}' for lr in self.ladder())}\ntest: {self.test().describe()}"
        a = self.adaptive()
        return (f"rates: {a.low:g} to {a.high:g}, chosen where lr90 is least known, {a.round_seeds} seeds each\n"
                f"stop: lr90's 95% interval within x{a.precision:g}, or {a.max_trainings} trainings per setting")

    def test(self) -> Sprt:
        return Sprt(self.reliability, self.unreliability, self.error_rate, self.max_seeds)

    def settings(self) -> list[dict[str, float]]:
        """Every setting, in grid order."""
        return [dict(zip(SETTING_AXES, values)) for values in product(*(getattr(self, n) for n in SETTING_AXES))]

    def spaces(self) -> dict[str, Space]:
        """Each axis's values, for lr the ladder's rungs (bisect) or its log range (adaptive): what a
        probe's params are drawn from."""
        rates = self.ladder() if self.method == "bisect" else Range(*astuple(self.adaptive())[:2], log=True)
        return {name: rates if name == "lr" else getattr(self, name) for name in axes.NAMES}

    def stored(self) -> dict:
        """The design's part of the stored configuration (`study.design.study_config`): each method's
        own fields only, so that changing the other's is no change of design. Studies stored before
        the adaptive method read as `bisect` (`study.design.upgrade_stored_config`)."""
        if self.method == "bisect":
            edge = {"reliability": self.reliability, "unreliability": self.unreliability,
                    "error_rate": self.error_rate, "max_seeds": self.max_seeds}
        else:
            edge = {"precision": self.precision, "max_trainings": self.max_trainings, "round_seeds": self.round_seeds}
        return {
            "space": {name: describe_space(space) for name, space in self.spaces().items()},
            "edge": {"method": self.method, **edge},
            "train_threshold": self.train_threshold,
        }


@dataclass
class Bisection:
    """Where a setting's search stands: `stable` is the index of the highest rung found reliable
    (-1: none yet), `unstable` the lowest rung above it found not reliable (len(ladder): none)."""

    stable: int
    unstable: int

    @property
    def next_rung(self) -> int | None:
        """The rung to probe next, midway; None once the two are neighbours (the edge is found)."""
        return None if self.unstable - self.stable <= 1 else (self.stable + self.unstable + 1) // 2


def bisection(verdicts: dict[int, str], n_rungs: int) -> Bisection:
    """The state of the search from the verdicts of its probes so far (rung index -> verdict)."""
    stable = max((i for i, v in verdicts.items() if v == RELIABLE), default=-1)
    unstable = min((i for i, v in verdicts.items() if v != RELIABLE and i > stable), default=n_rungs)
    return Bisection(stable, unstable)


def setting_key(params: dict[str, float]) -> tuple:
    return tuple(params[name] for name in SETTING_AXES)


def rung_verdicts(ladder: tuple[float, ...], probes: list[tuple[float, str]]) -> dict[int, str]:
    """Rung index -> verdict, from a setting's probes as (lr, verdict) pairs (`study.records.probe_verdicts`)."""
    return {ladder.index(lr): verdict for lr, verdict in probes}
