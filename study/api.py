"""The Python face, for notebooks: `study.search`, `study.ladder`, `study.load`, `study.train`
(exported by `study`).

Keywords are the configuration dataclasses' field names, with Python values:
`study.search(name="nb", leak=(0, 0.1), sub=(0, 0.4), seeds=(0, 1), model="mlp", max_steps=50)`.
A bad value raises `FieldError` naming the field; nothing is printed and no process exits. Heavy
imports (torch, Optuna) wait for the first call, so `import study` stays light.

An interrupt (a notebook's stop button, Ctrl-C) during `search`, `edge` or `train` stops at the next
safe point with `Interrupted`, a KeyboardInterrupt: the seed in flight is dropped, finished seeds
are kept, and calling again continues. The interrupt handlers are the caller's again on return.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from study import interrupts
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study import axes
from study.design import MachineConfig, StudyDesign, StudyPlace
from study.ladder import EdgeDesign
from study.errors import BadInput

RUN_CLASSES = (DataConfig, ModelConfig, OptimConfig, TrainConfig)

# Optuna imports tqdm.auto, which warns in a notebook without ipywidgets; initstudy's bars are plain text.
warnings.filterwarnings("ignore", message="IProgress not found")


class Study:
    """A stored study: its trials as pandas tables and its pictures as matplotlib Figures.

    `optuna` is the underlying `optuna.Study` for anything else (its trials, user attributes,
    `optuna.visualization`).
    """

    def __init__(self, optuna_study, place: StudyPlace):
        self.optuna, self.place = optuna_study, place

    @property
    def name(self) -> str:
        return self.place.name

    def frame(self):
        """One row per (COMPLETE setting, seed): number, init_scale, leak, sub, lr, momentum, seed,
        val_acc, test_acc, diverged, diverged_step."""
        from study.results import seed_frame

        return seed_frame(self.optuna)

    def trials(self):
        """One row per COMPLETE setting: its summary over seeds (mean_val_acc, worst_acc, frac_trained...)."""
        from study.results import trials_frame

        return trials_frame(self.optuna)

    def heatmap(self, metric: str = "frac_trained", x: str = "leak", y: str = "sub"):
        """One metric's heatmap (x by y: leak by sub unless asked; a panel per combination of the
        other axes that vary) as a matplotlib Figure."""
        check_axes(x, y)
        from study.plots import HEATMAP_METRICS, heatmap_figure, log_axes

        metrics = [m[0] for m in HEATMAP_METRICS]
        if metric not in metrics:
            raise BadInput(f"no heatmap of {metric!r}: choose one of {', '.join(metrics)}")
        trials = self.trials()
        if trials.empty:
            raise BadInput(f"study {self.name!r} has no COMPLETE trial yet")
        return heatmap_figure(trials, metric, log_axes(self.optuna), x, y)

    def figures(self) -> dict:
        """Every picture the command line draws for the study, by file name."""
        from study.plots import study_figures

        return study_figures(self.optuna)

    def save_figures(self, out_dir: str | Path | None = None) -> list[Path]:
        """The pictures as PNGs in `out_dir` (default: studies/NAME beside the database)."""
        from study.plots import save_figures

        return save_figures(self.figures(), Path(out_dir) if out_dir else self.place.out_dir())

    def report(self, out_dir: str | Path | None = None) -> Path:
        """report.md with its pictures in `out_dir` (default: studies/NAME beside the database)."""
        from study.report import write_report

        return write_report(self.optuna, Path(out_dir) if out_dir else self.place.out_dir())

    def summary(self) -> str:
        """The top settings by mean accuracy and by worst seed, as text."""
        from study.results import summary_table

        return summary_table(self.optuna)

    def __repr__(self) -> str:
        from optuna.trial import TrialState

        n = len(self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return f"<study {self.name!r}: {n} COMPLETE settings>"


def check_axes(x: str, y: str) -> None:
    """x and y of a heatmap: two different searched axes."""
    if x not in axes.NAMES or y not in axes.NAMES or x == y:
        raise BadInput(f"heatmap axes {x!r} by {y!r}: choose two different of {', '.join(axes.NAMES)}")


def search(name: str = "quick", *, storage: str | None = None, progress: bool = True, **settings) -> Study:
    """Run (or continue) study `name` to its target and return it.

    settings: fields of `StudyDesign` (init_scale, leak, sub as a tuple or a `Range`, seeds, sampler,
    objective, n_trials, train_threshold), of `MachineConfig` (workers, gpus, population, ...) and
    of the run configuration (model, lr, epochs, max_steps, ...; not seed, which is the design's).
    """
    place = StudyPlace(name=name, storage=storage)
    design, machine, *run_parts = _split(settings, (StudyDesign, MachineConfig, *RUN_CLASSES),
                                         skip=axes.NAMES + ("seed",))
    run = RunConfig(*run_parts)
    prepare_backend(run.train.backend)
    from study.runner import run_study

    with interrupts.stop_requests():
        return Study(run_study(place, design, run, machine, progress), place)


class Edge(Study):
    """A stored edge search (`study.ladder`): its table of edges, its probes, its pictures."""

    def __init__(self, optuna_study, place: StudyPlace, design: EdgeDesign):
        super().__init__(optuna_study, place)
        self.design = design

    def table(self):
        """One row per setting: max_stable_lr, first_unstable_lr, trainings, ... (`results.EDGE_COLUMNS`)."""
        from study.results import edge_table

        return edge_table(self.optuna, self.design)

    def probes(self):
        """One row per probe (setting, lr): verdict, trained of n_seeds, exact interval, accuracy of trained seeds."""
        from study.results import probe_frame

        return probe_frame(self.optuna)

    def figures(self) -> dict:
        from study.plots import edge_figures

        return edge_figures(self.table(), self.probes(), self.design.ladder())

    def cost(self) -> str:
        """The trainings used against a fixed 10-seed sweep of the same rungs."""
        from study.results import cost_line

        return cost_line(self.table(), self.design)


def edge(name: str, *, storage: str | None = None, progress: bool = True, **settings) -> Edge:
    """Run (or continue) edge search `name` to its end and return it.

    settings: fields of `EdgeDesign` (init_scale, leak, sub, momentum as tuples; lr as the ladder's
    rungs or a `Range` cut lr_step apart; reliability, unreliability, error_rate, max_seeds), of
    `MachineConfig` and of the run configuration (model, epochs, max_steps, ...).
    """
    place = StudyPlace(name=name, storage=storage)
    design, machine, *run_parts = _split(settings, (EdgeDesign, MachineConfig, *RUN_CLASSES),
                                         skip=axes.NAMES + ("seed",))
    run = RunConfig(*run_parts)
    prepare_backend(run.train.backend)
    from study.runner import run_study

    with interrupts.stop_requests():
        return Edge(run_study(place, design, run, machine, progress), place, design)


def load(name: str = "quick", storage: str | None = None) -> Study:
    """A stored study, for reading; BadInput naming the studies there when it is absent."""
    from study.storage import load_existing_study

    place = StudyPlace(name=name, storage=storage)
    return Study(load_existing_study(place), place)


def train(progress: bool = False, **settings):
    """Train one configuration; a `TrainResult` (val_acc, test_acc, diverged, layers, history, ...).

    settings: fields of the run configuration (model, leak, sub, init_scale, seed, lr, epochs, ...).
    """
    run = RunConfig(*_split(settings, RUN_CLASSES))
    prepare_backend(run.train.backend)
    from study.training import train as train_run

    with interrupts.stop_requests():
        return train_run(run, progress=progress)


def _split(settings: dict, classes: tuple, skip: tuple[str, ...] = ()) -> list:
    """One instance of each class, each keyword going to the first class with a field of its name;
    a name in `skip` is refused unless the first class has it (search's leak is the design's)."""
    names = [[f.name for f in dataclasses.fields(cls)] for cls in classes]
    owners = {}
    for index, fields in enumerate(names):
        for name in fields:
            if name not in owners and (index == 0 or name not in skip):
                owners[name] = index
    given = [{} for _ in classes]
    for key, value in settings.items():
        if key not in owners:
            raise BadInput(f"unknown setting {key!r}: choose from {', '.join(owners)}")
        given[owners[key]][key] = value
    return [cls(**kwargs) for cls, kwargs in zip(classes, given)]


def prepare_backend(backend: str) -> None:
    """Before torch is imported: the Triton interpreter where the fused kernel has no GPU to run on."""
    if backend == "triton":
        from study.model import choose_triton_interpreter

        choose_triton_interpreter()
