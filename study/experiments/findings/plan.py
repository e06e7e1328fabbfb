"""What the findings rest on: every study, its design and run configuration, in one plan.

The full plan is the lesson's set-up (its CNN, SGD momentum 0.85, batch 1024, one epoch, PyTorch's
bias init, all 60,000 training images: 59 steps per epoch, validated on the test file), with
  - the edge of the lesson grid (leak {0, .05, .1, .2, .5} x sub {0, .4, .7, .9}) on the ladder
    0.025-1.6 (factor sqrt 2), Wald's SPRT per probe (`python -m study edge`);
  - the edge of ReLU and of (.1, .4) at momentum {0, .5, .9} and at init_scale {0.5, 2};
  - the lesson's settings at its lr 0.2 with 20 shared seeds each (one study per setting);
  - two of them again with zero biases and with the 50,000-image split, on the same seeds.
The quick plan is the same shape on a small MLP trained for one epoch (59 steps), with fewer seeds
and a looser edge test (0.8 against 0.4, so that 6 seeds can decide): minutes, for trying it.

Each study has its own name in one SQLite file, so `python -m study findings` resumes them all and
a second run only re-renders; each is also an ordinary study for `report`, `heatmaps`, `dashboard`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.axes import Range
from study.design import StudyDesign
from study.place import StudyPlace
from study.ladder import EdgeDesign
from study.experiments.signal import SignalNet

LESSON_LR, LESSON_MOMENTUM = 0.2, 0.85
RELU, LESSON_RELU = (0.0, 0.0), (0.1, 0.4)


@dataclass(frozen=True)
class FindingsPlan:
    """Every choice the findings document depends on; `FULL` and `QUICK` are the two editions."""

    edition: str  # "full" or "quick"
    storage: str  # one SQLite file for every study of the edition
    run: RunConfig  # the set-up every study trains with (the lesson's, for the full edition)
    grid_leak: tuple[float, ...]
    grid_sub: tuple[float, ...]
    ladder: Range | tuple[float, ...]
    lr_step: float
    max_seeds: int  # of an edge probe
    shifted: tuple[tuple[float, float], ...]  # settings whose edge is measured at other momenta and scales
    momenta: tuple[float, ...]  # besides the lesson's
    init_scales: tuple[float, ...]  # besides 1
    lesson_settings: tuple[tuple[float, float], ...]  # at LESSON_LR with `seeds` shared seeds
    seeds: int
    setup_settings: tuple[tuple[float, float], ...]  # again with zero biases and with the 50k split
    sharpness_seeds: int  # lambda_max at init per grid setting
    sharpness_steps: int  # lambda_max along the first steps, for `shifted`
    reliability: float = EdgeDesign.reliability  # the edge's sequential test: trains for >= this share ...
    unreliability: float = EdgeDesign.unreliability  # ... against <= this share
    signal: SignalNet = field(default_factory=SignalNet)
    signal_seeds: tuple[int, ...] = (0, 1, 2)
    signal_images: int = 256

    def place(self, name: str) -> StudyPlace:
        return StudyPlace(name=name, storage=self.storage)

    def edge_studies(self) -> dict[str, EdgeDesign]:
        """name -> design: the grid's edge, then each shifted setting across momenta and init scales."""
        # The second edition's method: its studies continue (the third edition is the curve's: issue 23).
        common = dict(lr=self.ladder, lr_step=self.lr_step, max_seeds=self.max_seeds, reliability=self.reliability,
                      unreliability=self.unreliability, method="bisect")
        studies = {"findings-edge": EdgeDesign(leak=self.grid_leak, sub=self.grid_sub, momentum=(LESSON_MOMENTUM,),
                                           **common)}
        for leak, sub in self.shifted:
            studies[f"findings-edge-momentum-{leak:g}-{sub:g}"] = EdgeDesign(leak=(leak,), sub=(sub,), momentum=self.momenta,
                                                                    **common)
            studies[f"findings-edge-scale-{leak:g}-{sub:g}"] = EdgeDesign(leak=(leak,), sub=(sub,), init_scale=self.init_scales,
                                                                 momentum=(LESSON_MOMENTUM,), **common)
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


# The second edition's divergence rule (absolute, as before 0.6.0), so that its studies continue; the
# third edition's is the relative one (issue 23).
SECOND_EDITION_DIVERGENCE = TrainConfig(diverge_factor=None, diverge_loss=100.0)
LESSON_RUN = RunConfig(data=DataConfig(n_val=0), model=ModelConfig(model="cnn", bias_init="default"),
                       optim=OptimConfig(batch_size=1024, epochs=1), train=SECOND_EDITION_DIVERGENCE)

FULL = FindingsPlan(
    edition="full", storage="sqlite:///studies/findings.db", run=LESSON_RUN,
    grid_leak=(0.0, 0.05, 0.1, 0.2, 0.5), grid_sub=(0.0, 0.4, 0.7, 0.9),
    ladder=Range(0.025, 1.6, log=True), lr_step=math.sqrt(2), max_seeds=20,
    shifted=(RELU, LESSON_RELU), momenta=(0.0, 0.5, 0.9), init_scales=(0.5, 2.0),
    lesson_settings=(RELU, LESSON_RELU, (0.2, 0.4), (0.5, 0.7), (0.05, 0.9)), seeds=20,
    setup_settings=(RELU, LESSON_RELU), sharpness_seeds=3, sharpness_steps=10,
)

QUICK = FindingsPlan(
    edition="quick", storage="sqlite:///studies/findings-quick.db",
    run=replace(LESSON_RUN, model=ModelConfig(model="mlp", widths=(32,), bias_init="default"),
                train=replace(SECOND_EDITION_DIVERGENCE, max_steps=59)),
    grid_leak=(0.0, 0.1), grid_sub=(0.0, 0.4),
    ladder=Range(0.1, 0.8, log=True), lr_step=2.0, max_seeds=6, reliability=0.8, unreliability=0.4,
    shifted=(LESSON_RELU,), momenta=(0.5,), init_scales=(2.0,),
    lesson_settings=(RELU, LESSON_RELU, (0.2, 0.4), (0.5, 0.7), (0.05, 0.9)), seeds=5,
    setup_settings=(LESSON_RELU,), sharpness_seeds=2, sharpness_steps=3,
    signal=SignalNet(depth=6, width=64), signal_seeds=(0, 1), signal_images=64,
)
