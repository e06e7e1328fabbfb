"""Configuration of one training run, one dataclass per concern.

Every default carries its unit and why. Each dataclass validates itself on construction and raises
`FieldError` (a `BadInput` naming the field), so a bad value is refused the same way from the command line and from Python. The CLI
(`study/cli.py`) builds its flags from these fields; `help` and `choices` live in field metadata.
A study's design, place and machine side are in `study/design.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from study import axes
from study.axes import check_axes, config_fields
from study.errors import FieldError

MODELS = ("mlp", "cnn")
INITS = ("kaiming", "lsuv")
BIAS_INITS = ("default", "zero")
SCHEDULES = ("constant", "onecycle")
BACKENDS = ("torch", "triton")
DTYPES = ("float32", "bfloat16", "float64")


# Run-configuration fields that are not part of a study's design: each trial's own (seed), or where a
# machine runs it (device; data_dir, since machines may keep the same files at other paths).
NOT_DESIGN = {"data": ("data_dir",), "train": ("seed", "device")}
# Of those, what each machine gives itself (`python -m study work`); the seed is each trial's.
MACHINE_LOCAL = tuple(name for names in NOT_DESIGN.values() for name in names if name != "seed")


def describe(text: str, **extra) -> dict:
    """Field metadata: the help text (and `choices`) the command line shows for the field."""
    return {"help": text, **extra}


def check_choices(config) -> None:
    """Every field of `config` whose metadata lists `choices` holds one of them."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(config, f.name) not in choices:
            raise FieldError(f.name, f"{getattr(config, f.name)!r} is unknown: choose one of {', '.join(choices)}")


def check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value}")


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = field(
        default=None,
        metadata=describe("directory with FashionMNIST's four IDX files (.gz or not); default: the Debian "
                       "package's /usr/share/datasets/fashion-mnist, else a torchvision download"),
    )
    n_val: int = field(
        default=10_000,  # images carved out of the 60k training file; the other 50k train
        metadata=describe("validation images taken from the training file; 0: train on all 60,000 and "
                       "validate on the test file, as the lesson does (59 steps per epoch at batch 1024)"),
    )
    split_seed: int = field(
        default=0,  # fixed so every run and every study sees the same train/validation split
        metadata=describe("seed of the fixed permutation that splits train from validation"),
    )

    def __post_init__(self):
        if not 0 <= self.n_val < 60_000:
            raise FieldError("n_val", f"must be between 0 and 59999, got {self.n_val}")


@dataclass(frozen=True)
@config_fields("model")  # init_scale, leak, sub: study/axes.py
class ModelConfig:
    model: str = field(default="cnn", metadata=describe("architecture", choices=MODELS))
    widths: tuple[int, ...] = field(
        default=(256, 256, 256),  # the MLP of the measurements: 784-256-256-256-10
        metadata=describe("MLP hidden widths, comma separated"),
    )
    maxv: float | None = field(default=None, metadata=describe("GeneralRelu upper clamp (default: off)"))
    init: str = field(default="kaiming", metadata=describe("weight initialisation", choices=INITS))
    bias_init: str = field(
        default="default",  # the lesson's: its init_weights re-draws weights only
        metadata=describe("biases at initialisation: default = PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) "
                       "as in the lesson; zero = all zero (what initstudy before 0.4.0 did)",
                       choices=BIAS_INITS),
    )

    def __post_init__(self):
        check_axes(self, "model")
        check_choices(self)
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or any(w < 1 for w in self.widths):
            raise FieldError("widths", f"must be positive integers, got {','.join(map(str, self.widths))}")
        if self.maxv is not None:
            check_finite("maxv", self.maxv)
            if self.maxv <= 0:
                raise FieldError("maxv", f"must be positive, got {self.maxv}")


@dataclass(frozen=True)
@config_fields("optim")  # lr, momentum, warmup_steps: study/axes.py
class OptimConfig:
    weight_decay: float = field(default=0.0, metadata=describe("SGD weight decay"))
    schedule: str = field(
        default="constant", metadata=describe("learning-rate schedule", choices=SCHEDULES)
    )
    batch_size: int = field(default=1024, metadata=describe("training batch size (the lesson's 1024)"))
    epochs: int = field(default=1, metadata=describe("passes over the 50,000 training images"))

    def __post_init__(self):
        check_axes(self, "optim")
        check_choices(self)
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise FieldError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise FieldError("epochs", f"must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = field(default=0, metadata=describe("seed of the initial weights and of the data order"))
    device: str = field(default="auto", metadata=describe("auto, cpu, cuda or cuda:N"))
    backend: str = field(
        default="torch",
        metadata=describe("torch: PyTorch layers; triton: the fused kernel (CUDA, or Triton's slow interpreter "
                       "on a machine without CUDA)", choices=BACKENDS),
    )
    dtype: str = field(
        default="float32",
        metadata=describe("bfloat16: autocast with float32 master weights (faster where the CPU or GPU has "
                       "bf16 units); float64: everything in double precision, for checking",
                       choices=DTYPES),
    )
    max_steps: int | None = field(
        default=None, metadata=describe("stop after this many optimiser steps (default: all epochs)"))
    stats_every: int = field(
        default=1,  # every step, as the lesson's hooks do; raise it to make long runs cheaper
        metadata=describe("record activation statistics every this many steps"),
    )
    diverge_factor: float | None = field(
        # At the lesson's start (loss ~ ln 10 = 2.3) this is the absolute 100 that studies before 0.6.0
        # used; relative, so that a start far above chance (init_scale 2: 13-55) is not itself "diverged".
        default=40.0,
        metadata=describe("a training loss above this many times the run's own first loss (or NaN/inf) stops "
                       "the run as diverged; off: no relative limit"),
    )
    diverge_loss: float | None = field(
        default=None,  # studies stored before 0.6.0 keep their 100 (`study.design.upgrade_stored_config`)
        metadata=describe("a training loss above this stops the run as diverged (the absolute rule of "
                       "studies before 0.6.0, which used 100); default: off"),
    )

    def __post_init__(self):
        check_choices(self)
        if self.seed < 0:
            raise FieldError("seed", f"must be >= 0, got {self.seed}")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise FieldError("device", f"{self.device!r} is unknown: use auto, cpu, cuda or cuda:N")
        if self.max_steps is not None and self.max_steps < 1:
            raise FieldError("max_steps", f"must be >= 1, got {self.max_steps}")
        if self.stats_every < 1:
            raise FieldError("stats_every", f"must be >= 1, got {self.stats_every}")
        if self.diverge_factor is not None and not 1 < self.diverge_factor < math.inf:
            raise FieldError("diverge_factor", f"must be a finite number above 1 (or off), got {self.diverge_factor}")
        if self.diverge_loss is not None and not 0 < self.diverge_loss < math.inf:
            raise FieldError("diverge_loss", f"must be a finite positive number (or off), got {self.diverge_loss}")

    def divergence_limit(self, first_loss: float) -> float:
        """The training loss above which a run whose first loss was `first_loss` has diverged (a loss
        that is not finite always has): the lower of the relative and the absolute limit, inf if off."""
        relative = math.inf if self.diverge_factor is None else self.diverge_factor * first_loss
        return min(relative, math.inf if self.diverge_loss is None else self.diverge_loss)

    def divergence_rule(self) -> str:
        """The rule in words, for reports: "loss is not finite or above 40x its first loss"."""
        limits = ([] if self.diverge_factor is None else [f"above {self.diverge_factor:g}x its first loss"]) + \
                 ([] if self.diverge_loss is None else [f"above {self.diverge_loss:g}"])
        return "loss is not finite" + "".join(f" or {limit}" for limit in limits)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; serialised into its result."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def at(self, setting: dict[str, float], seed: int) -> "RunConfig":
        """This configuration at a study's setting (every axis's value, `study.axes`) and seed."""
        return replace(self, model=replace(self.model, **{name: setting[name] for name in axes.MODEL}),
                       optim=replace(self.optim, **{name: setting[name] for name in axes.OPTIM}),
                       train=replace(self.train, seed=seed))


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
