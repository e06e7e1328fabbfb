"""Every axis a study can search or hold fixed, declared once.

An axis is a field of the run configuration (`ModelConfig` or `OptimConfig`, its `section`) that a
study may vary: its bounds, whether it may be a log range, its value in a single run, the values a
study tries unless told, and what studies stored before the axis existed ran at. Everything that
knows the axes loops over `AXES`: the configuration dataclasses get their fields from it
(`config_fields`), the designs their spaces (`space_fields`), and the flags, the stored
configuration's upgrade, setting names, tables, pictures and edge.csv their columns.

Adding an axis is one `Axis` here plus its use in the training step.

A space is what a study searches on an axis: a tuple of values, or a `Range` (log-uniform if `log`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Union

from study.errors import FieldError


@dataclass(frozen=True)
class Range:
    """A searched parameter's interval [low, high], sampled log-uniformly if `log` (init_scale, lr)."""

    low: float
    high: float
    log: bool = False


Space = Union[tuple[float, ...], Range]  # a list of values, or a range


@dataclass(frozen=True)
class Axis:
    """One searchable field of the run configuration.

    Bounds are `low` <= value (or < with `low_open`) and value < `high`; None is unbounded.
    `stored_before`: the value studies stored before this axis existed ran at (they read it as a
    one-value axis and continue); None for the axes initstudy has always stored.
    """

    name: str
    section: str  # "model" or "optim": the part of `RunConfig` the field belongs to
    default: float | int  # a single run's value
    search: tuple  # the values a study tries unless told
    help: str
    low: float | None = None
    low_open: bool = False
    high: float | None = None  # always open: leak and momentum stay below 1
    log: bool = False  # may be a log range
    integer: bool = False
    stored_before: float | int | None = None

    def check(self, value, values: bool = False) -> None:
        """FieldError unless `value` is allowed on this axis; `values` words the message for a space."""
        what = "values" if values else "must be"
        verb = " must be" if values else ""
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise FieldError(self.name, f"{what}{verb} finite numbers, got {value}" if values
                             else f"must be a finite number, got {value}")
        if self.integer and value != int(value):
            raise FieldError(self.name, f"{what}{verb} whole numbers, got {value:g}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            if self.low_open and self.low == 0 and self.high is None:
                raise FieldError(self.name, f"{what}{verb} positive, got {value:g}")
            raise FieldError(self.name, f"{what}{verb} {self._interval()}, got {value:g}")
        if self.high is not None and value >= self.high:
            raise FieldError(self.name, f"{what}{verb} {self._interval()}, got {value:g}")

    def value(self, number):
        """A number checked and typed for the configuration (an int on an integer axis)."""
        self.check(number)
        return int(number) if self.integer else float(number)

    def _interval(self) -> str:
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"


AXES = (
    Axis("init_scale", "model", 1.0, (1.0,), "multiplier on the initial weights (> 0)",
         low=0, low_open=True, log=True),
    Axis("leak", "model", 0.1, (0.0, 0.05, 0.1, 0.2, 0.5), "GeneralRelu negative slope, in [0, 1)",
         low=0, high=1),
    Axis("sub", "model", 0.4, (0.0, 0.2, 0.4, 0.7, 0.9), "GeneralRelu shift subtracted after the leaky ReLU"),
    # The lesson's CNN rate, used by `train`, the quick study, findings and the Python API alike.
    # GeneralRelu(.1,.4) trained for 6 of 8 seeds at 0.2 and 8 of 8 at 0.15 (measured 2026-11-23,
    # CPU, 1 epoch; not told apart with 8 seeds, Fisher p = 0.47): see the README.
    Axis("lr", "optim", 0.2, (0.2,), "SGD learning rate", low=0, low_open=True, log=True),
    Axis("momentum", "optim", 0.85, (0.85,), "SGD momentum (the lesson's MomentumLearner)", low=0, high=1),
    Axis("warmup_steps", "optim", 0, (0,),
         "learning-rate warm-up: step i of the first K takes the schedule's rate times (i + 1)/K (with the "
         "constant schedule: from lr/K up to lr), then the schedule's own", low=0, integer=True, stored_before=0),
)
BY_NAME = {axis.name: axis for axis in AXES}
NAMES = tuple(axis.name for axis in AXES)  # a setting is a point on these axes, in this order
MODEL = tuple(axis.name for axis in AXES if axis.section == "model")
OPTIM = tuple(axis.name for axis in AXES if axis.section == "optim")


def config_fields(section: str):
    """Class decorator, applied before `@dataclass`: a field per axis of `section`, first, with the
    axis's single-run default and help. The class's `__post_init__` calls `check_axes`."""
    def add(cls):
        own = cls.__dict__.get("__annotations__", {})
        mine = [axis for axis in AXES if axis.section == section]
        for axis in mine:
            setattr(cls, axis.name, field(default=axis.default, metadata={"help": axis.help}))
        cls.__annotations__ = {**{a.name: "int" if a.integer else "float" for a in mine}, **own}
        return cls
    return add


def check_axes(config, section: str) -> None:
    """Each axis field of a frozen config checked and typed (`Axis.value`)."""
    for axis in AXES:
        if axis.section == section:
            object.__setattr__(config, axis.name, axis.value(getattr(config, axis.name)))


def space_fields(skip: tuple[str, ...] = (), ranges: bool = True, defaults: dict | None = None):
    """Class decorator, applied before `@dataclass`: a `Space` field per axis (but `skip`), first,
    defaulting to the values a study tries (or to `defaults[name]`). `ranges` False: the field takes
    a list only."""
    def add(cls):
        own = cls.__dict__.get("__annotations__", {})
        mine = [axis for axis in AXES if axis.name not in skip]
        for axis in mine:
            form = "values (list)" + (", or range low:high" + ("[:log]" if axis.log else "") if ranges else "")
            default = (defaults or {}).get(axis.name, axis.search)
            setattr(cls, axis.name, field(default=default, metadata={"help": f"{axis.help}: {form}"}))
        cls.__annotations__ = {**{a.name: "Space" for a in mine}, **own}
        return cls
    return add


def describe_space(space: Space, exact: bool = False) -> str:
    """`0,0.2,0.4`, `0:0.5` or `0.1:10:log`: how a space is written on the command line and stored
    (6 significant digits; every digit with `exact`)."""
    form = repr if exact else "{:g}".format
    if isinstance(space, Range):
        return f"{form(space.low)}:{form(space.high)}" + (":log" if space.log else "")
    return ",".join(form(v) for v in space)


def parse_space(text: str) -> Space:
    """`0,0.2,0.4` is a list, `0:0.5` a range, `0.1:10:log` a log range."""
    if ":" not in text:
        return tuple(float(v) for v in text.split(","))
    low, high, *rest = text.split(":")
    if rest not in ([], ["log"]):
        raise ValueError(text)
    return Range(float(low), float(high), log=rest == ["log"])


def describe_setting(params: dict[str, float]) -> str:
    """`init_scale 1, leak 0.1, sub 0.4, lr 0.2, momentum 0.85, warmup_steps 0`: a setting in words."""
    return ", ".join(f"{name} {params[name]:g}" for name in NAMES)


def check_space(name: str, value) -> Space:
    """A space of axis `name` from what a caller gave: a Range, one number, or a sequence of numbers
    (as floats); every value the space allows is checked against the axis's bounds."""
    axis = BY_NAME[name]
    if isinstance(value, Range):
        space = Range(float(value.low), float(value.high), value.log)
        bounds = (space.low, space.high)
        if not all(math.isfinite(v) for v in bounds):
            raise FieldError(name, "must hold finite numbers")
        if not space.low < space.high:
            raise FieldError(name, f"range {describe_space(space)} is empty or inverted: write low:high with low < high")
        if space.log and not axis.log:
            raise FieldError(name, f"may not be a log range: only {' and '.join(a.name for a in AXES if a.log)} may")
    else:
        values = (value,) if isinstance(value, numbers.Real) else tuple(value)
        try:
            space = bounds = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise FieldError(name, f"{value!r}: give numbers like (0, 0.2, 0.4) or a Range") from None
        if not space:
            raise FieldError(name, "lists no value")
        if not all(math.isfinite(v) for v in space):
            raise FieldError(name, "must hold finite numbers")
        if len(set(space)) != len(space):
            raise FieldError(name, "lists a value twice")
    for v in bounds:
        axis.check(v, values=True)
    return space


def upgrade_space(stored: dict) -> dict:
    """A stored configuration with every axis in its `space`: an axis stored as a one-value field of
    its section (lr and momentum before 0.3.0) moves there; one added since (`stored_before`) reads
    as the value studies then ran at."""
    space, sections = dict(stored.get("space", {})), {k: dict(stored[k]) for k in ("model", "optim") if k in stored}
    for axis in AXES:
        if axis.name in space:
            continue
        section = sections.get(axis.section, {})
        if axis.name in section:
            space[axis.name] = f"{section.pop(axis.name):g}"
        elif axis.stored_before is not None:
            space[axis.name] = f"{axis.stored_before:g}"
    return {**stored, **sections, "space": space}
