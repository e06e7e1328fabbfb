"""What the findings rest on: every study, its design and run configuration, in one plan.

The full plan (third edition) is the lesson's set-up (its CNN, SGD momentum 0.85, batch 1024, one
epoch, PyTorch's bias init, all 60,000 training images: 59 steps per epoch, validated on the test
file; a run diverges above 40x its own first loss), with
  - the edge of the lesson grid (leak {0, .05, .1, .2, .5} x sub {0, .4, .7, .9}) as a curve, lr90
    with its interval, the adaptive method choosing rates in 0.025-1.6 (`python -m study edge`);
  - the edge of ReLU and of (.1, .4) at momentum {0, .5, .9} and at init_scale {0.5, 2}: with the
    grid's momentum .85 and init_scale 1, the laws lr90 ~ (1 - momentum)^alpha and ~ init_scale^beta;
  - the lesson's settings at its lr 0.2 with 20 shared seeds each (one study per setting);
  - two of them again with zero biases and with the 50,000-image split, on the same seeds;
  - the edge of ReLU, (.1, .4) and (.2, .4) again with a learning-rate warm-up of 5 and 20 steps, and
    their first steps (`python -m study dynamics`: lambda_max and lr x lambda_max / (2 (1 + mu)) per
    step, each seed's outcome) at their lr90 and lr50 without warm-up, at lr50 with 20 steps of it,
    and (.2, .4)'s at the lesson's lr, on the lesson studies' seeds.
The quick plan is the same shape on a small MLP trained for one epoch (59 steps), with fewer seeds
and fewer trainings per edge: minutes, for trying it.

Each study has its own name in one SQLite file, so `python -m study findings` resumes them all and
a second run only re-renders; each is also an ordinary study for `report`, `heatmaps`, `dashboard`.
The second edition's studies (bisection, an absolute divergence limit) are in another file
(`findings.db`) and are not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.axes import Range
from study.design import DynamicsDesign, StudyDesign
from study.place import StudyPlace
from study.edge_law import FIT_DRAWS
from study.ladder import EdgeDesign
from study.experiments.signal import SignalNet

LESSON_LR, LESSON_MOMENTUM = 0.2, 0.85
RELU, LESSON_RELU = (0.0, 0.0), (0.1, 0.4)
LESSON_FAILS = (0.2, 0.4)  # "fails with seed 1", the lesson says


@dataclass(frozen=True)
class FindingsPlan:
    """Every choice the findings document depends on; `FULL` and `QUICK` are the two editions."""

    edition: str  # "full" or "quick"
    storage: str  # one SQLite file for every study of the edition
    run: RunConfig  # the set-up every study trains with (the lesson's, for the full edition)
    grid_leak: tuple[float, ...]
    grid_sub: tuple[float, ...]
    rates: Range  # where the adaptive method may probe
    max_trainings: int  # of an edge, per setting
    shifted: tuple[tuple[float, float], ...]  # settings whose edge is measured at other momenta and scales
    momenta: tuple[float, ...]  # besides the lesson's
    init_scales: tuple[float, ...]  # besides 1
    lesson_settings: tuple[tuple[float, float], ...]  # at LESSON_LR with `seeds` shared seeds
    seeds: int
    setup_settings: tuple[tuple[float, float], ...]  # again with zero biases and with the 50k split
    sharpness_seeds: int  # lambda_max at init per grid setting
    sharpness_steps: int  # lambda_max along the first steps, for `shifted`
    warmup_settings: tuple[tuple[float, float], ...]  # edge again with a warm-up; first steps measured
    warmups: tuple[int, ...]  # warm-up steps besides 0 (the grid's own)
    dynamics_steps: int  # first steps measured of each seed
    curve_draws: int = 1_999  # parametric-bootstrap draws of section 7's `same_curve_p`
    law_draws: int = FIT_DRAWS  # of section 3's law fit test (`edge_law.fit_law`)
    precision: float = EdgeDesign.precision  # an edge is done when lr90's interval is this narrow (upper / lower)
    signal: SignalNet = field(default_factory=SignalNet)
    signal_seeds: tuple[int, ...] = (0, 1, 2)
    signal_images: int = 256

    def place(self, name: str) -> StudyPlace:
        return StudyPlace(name=name, storage=self.storage)

    def edge_studies(self) -> dict[str, EdgeDesign]:
        """name -> design: the grid's edge, then each shifted setting across momenta and init scales."""
        common = dict(lr=self.rates, method="adaptive", max_trainings=self.max_trainings, precision=self.precision)
        studies = {"findings-edge": EdgeDesign(leak=self.grid_leak, sub=self.grid_sub, momentum=(LESSON_MOMENTUM,),
                                           **common)}
        for leak, sub in self.shifted:
            studies[f"findings-edge-momentum-{leak:g}-{sub:g}"] = EdgeDesign(leak=(leak,), sub=(sub,), momentum=self.momenta,
                                                                    **common)
            studies[f"findings-edge-scale-{leak:g}-{sub:g}"] = EdgeDesign(leak=(leak,), sub=(sub,), init_scale=self.init_scales,
                                                                 momentum=(LESSON_MOMENTUM,), **common)
        for leak, sub in self.warmup_settings:  # warm-up 0 is the grid's: the same seeds at the same rates
            studies[f"findings-edge-warmup-{leak:g}-{sub:g}"] = EdgeDesign(leak=(leak,), sub=(sub,), warmup_steps=self.warmups,
                                                                  momentum=(LESSON_MOMENTUM,), **common)
        return studies

    def dynamics_rates(self, grid: pd.DataFrame) -> dict[tuple[float, float], dict[str, float]]:
        """(leak, sub) -> {"lr90": .., "lr50": ..} of each warm-up setting, from the grid's edge
        (`results.edge_table`), to two significant digits: where its first steps are measured."""
        rates = {}
        for leak, sub in self.warmup_settings:
            row = grid[(grid["leak"] == leak) & (grid["sub"] == sub)].iloc[0]
            rates[(leak, sub)] = {name: float(f"{row[name]:.2g}") for name in ("lr90", "lr50")}
        return rates

    def dynamics_studies(self, grid: pd.DataFrame) -> dict[str, DynamicsDesign]:
        """name -> design: each warm-up setting's first steps at its `dynamics_rates` without warm-up and at its lr50 with the
        longest warm-up, on the lesson studies' seeds (so paired); (.2, .4)'s also at the lesson's lr,
        where its seeds fail as they do in its lesson study."""
        common = dict(momentum=(LESSON_MOMENTUM,), steps=self.dynamics_steps, seeds=tuple(range(self.seeds)))
        studies = {}
        for (leak, sub), rates in self.dynamics_rates(grid).items():
            lr90, lr50 = rates["lr90"], rates["lr50"]
            lesson = {LESSON_LR} if (leak, sub) == LESSON_FAILS and LESSON_FAILS in self.lesson_settings else set()
            studies[f"findings-dynamics-{leak:g}-{sub:g}"] = DynamicsDesign(
                leak=(leak,), sub=(sub,), lr=tuple(sorted({lr90, lr50} | lesson)), **common)
            studies[f"findings-dynamics-warmup-{leak:g}-{sub:g}"] = DynamicsDesign(
                leak=(leak,), sub=(sub,), lr=(lr50,), warmup_steps=(max(self.warmups),), **common)
        return studies

    def lesson_studies(self) -> dict[str, tuple[StudyDesign, RunConfig]]:
        """name -> (design, run): each lesson setting at the lesson's lr and momentum on shared seeds,
        and the set-up variants (`setup_variant`) of `setup_settings`."""
        studies = {}
        for variant, run in (("lesson", self.run), *self.setup_variants().items()):
            settings = self.lesson_settings if variant == "lesson" else self.setup_settings
            for leak, sub in settings:
                design = StudyDesign(leak=(leak,), sub=(sub,), lr=(LESSON_LR,), momentum=(LESSON_MOMENTUM,),
                                     seeds=tuple(range(self.seeds)))
                studies[f"findings-{variant}-{leak:g}-{sub:g}"] = (design, run)
        return studies

    def setup_variants(self) -> dict[str, RunConfig]:
        """The project's earlier set-up, one difference at a time: zero biases; the 50,000-image split."""
        return {"zero-bias": replace(self.run, model=replace(self.run.model, bias_init="zero")),
                "split-50k": replace(self.run, data=replace(self.run.data, n_val=10_000))}


LESSON_RUN = RunConfig(data=DataConfig(n_val=0), model=ModelConfig(model="cnn", bias_init="default"),
                       optim=OptimConfig(batch_size=1024, epochs=1))

FULL = FindingsPlan(
    edition="full", storage="sqlite:///studies/findings-3.db", run=LESSON_RUN,
    grid_leak=(0.0, 0.05, 0.1, 0.2, 0.5), grid_sub=(0.0, 0.4, 0.7, 0.9),
    rates=Range(0.025, 1.6, log=True), max_trainings=EdgeDesign.max_trainings,
    shifted=(RELU, LESSON_RELU), momenta=(0.0, 0.5, 0.9), init_scales=(0.5, 2.0),
    lesson_settings=(RELU, LESSON_RELU, LESSON_FAILS, (0.5, 0.7), (0.05, 0.9)), seeds=20,
    setup_settings=(RELU, LESSON_RELU), sharpness_seeds=3, sharpness_steps=10,
    warmup_settings=(RELU, LESSON_RELU, LESSON_FAILS), warmups=(5, 20), dynamics_steps=10,
)

QUICK = FindingsPlan(
    edition="quick", storage="sqlite:///studies/findings-quick-3.db",
    run=replace(LESSON_RUN, model=ModelConfig(model="mlp", widths=(32,), bias_init="default"),
                train=TrainConfig(max_steps=59)),
    grid_leak=(0.0, 0.1), grid_sub=(0.0, 0.4),
    rates=Range(0.05, 1.6, log=True), max_trainings=12, precision=3.0, curve_draws=49, law_draws=49,
    shifted=(LESSON_RELU,), momenta=(0.5,), init_scales=(2.0,),
    lesson_settings=(RELU, LESSON_RELU, LESSON_FAILS, (0.5, 0.7), (0.05, 0.9)), seeds=5,
    setup_settings=(LESSON_RELU,), sharpness_seeds=2, sharpness_steps=3,
    warmup_settings=(RELU, LESSON_RELU), warmups=(5,), dynamics_steps=3,
    signal=SignalNet(depth=6, width=64), signal_seeds=(0, 1), signal_images=64,
)
