"""The Python face, for notebooks: `study.search`, `study.edge`, `study.dynamics`, `study.create`, `study.work`,
`study.load`, `study.train`, `study.sharpness`, `study.signal`, `study.findings` (exported by `study`). The command line
(`study.cli`) parses its flags into the same dataclasses and calls the same functions.

Keywords are the configuration dataclasses' field names, with Python values:
`study.search(name="nb", leak=(0, 0.1), sub=(0, 0.4), seeds=(0, 1), model="mlp", max_steps=50)`.
A bad value raises `FieldError` naming the field; nothing is printed and no process exits. Heavy
imports (torch, Optuna) wait for the first call, so `import study` stays light, and no import
changes global state: each call sets what it needs (Optuna's log level, warning filters, Triton's
interpreter where there is no GPU) and restores the log level and filters on return.

An interrupt (a notebook's stop button, Ctrl-C) during a call stops at the next safe point with
`Interrupted`, a KeyboardInterrupt: the seed in flight is dropped, finished seeds are kept, and
calling again continues. The interrupt handlers are the caller's again on return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator

from study import axes, interrupts
from study.config import MACHINE_LOCAL, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.design import DynamicsDesign, MachineConfig, StudyDesign
from study.errors import BadInput, FieldError
from study.ladder import EdgeDesign
from study.place import StudyPlace
from study.stored_design import check_storable
from study.quiet import libraries_quiet
from study.views import Dynamics, Edge, Study

RUN_CLASSES = (DataConfig, ModelConfig, OptimConfig, TrainConfig)


def search(name: str = "quick", *, storage: str | None = None, progress: bool = True, callbacks=(),
           **settings) -> Study:
    """Run (or continue) study `name` to its target and return it.

    settings: fields of `StudyDesign` (init_scale, leak, sub, lr, momentum, warmup_steps as a tuple
    or a `Range`, seeds, sampler, objective, n_trials, train_threshold), of `MachineConfig`
    (workers, gpus, population, artifacts, ...) and of the run configuration (model, epochs,
    max_steps, ...; not seed, which is the design's). callbacks: Optuna callbacks, each called as
    `callback(optuna_study, frozen_trial)` after each trial is stored (e.g. optuna-integration's
    MLflowCallback), by the process that trained it: with `workers`, they must pickle.
    """
    design, machine, *run_parts = _split(settings, (StudyDesign, MachineConfig, *RUN_CLASSES),
                                         skip=axes.NAMES + ("seed",))
    return search_study(StudyPlace(name=name, storage=storage), design, RunConfig(*run_parts), machine, progress,
                        callbacks)


def search_study(place: StudyPlace, design: StudyDesign, run: RunConfig, machine: MachineConfig = MachineConfig(),
                 progress: bool = True, callbacks=()) -> Study:
    """`search` from the configuration dataclasses (the command line's way in)."""
    with _call(run.train.backend):
        _start_workers_early(run, machine)
        from study.runner import run_study

        return Study(run_study(place, design, run, machine, progress, activations=True, callbacks=callbacks,
                               when_a_core_is_free=Study.import_libraries), place)


def create(name: str, *, storage: str | None = None, edge: bool = False, **settings) -> Study | Edge:
    """Store study `name`'s design (and a grid's points) and train nothing: machines then join it with
    `work`, which reads the design from the storage. Creating it again with the same design is
    harmless; with another, refused.

    settings: the design and run configuration as `search` takes them (as `edge` does, with `edge`),
    without what a machine keeps for itself: workers and the other `MachineConfig` fields, data_dir,
    device (each `work` gives its own).
    """
    machine_fields = {f.name for f in dataclasses.fields(MachineConfig)}
    if local := [key for key in settings if key in MACHINE_LOCAL or key in machine_fields]:
        raise BadInput(f"`{local[0]}` is each machine's own, not the study's design: give it to `work`")
    design, *run_parts = _split(settings, (EdgeDesign if edge else StudyDesign, *RUN_CLASSES),
                                skip=axes.NAMES + ("seed",), refused=MACHINE_LOCAL)
    return create_study(StudyPlace(name=name, storage=storage), design, RunConfig(*run_parts))


def create_study(place: StudyPlace, design: StudyDesign | EdgeDesign, run: RunConfig) -> Study | Edge:
    """`create` from the configuration dataclasses (the command line's way in)."""
    check_storable(design)
    with _call(run.train.backend):
        from study.runner import create_study as store_design

        optuna_study = store_design(place, design, run)
        return Edge(optuna_study, place, design) if isinstance(design, EdgeDesign) else Study(optuna_study, place)


def work(name: str, *, storage: str | None = None, progress: bool = True, data_dir: str | None = None,
         device: str = "auto", callbacks=(), **machine) -> Study | Edge | Dynamics:
    """Join study `name`, on this machine, until it is done: its design (a search's or an edge
    search's) is read from the storage, where `create` (or a first `search` or `edge`) stored it.

    data_dir, device: where this machine keeps FashionMNIST and trains. machine: fields of
    `MachineConfig` (workers, gpus, population, artifacts, heartbeat_seconds, ...). callbacks: as
    `search` takes them.
    """
    (machine_config,) = _split(machine, (MachineConfig,))
    place = StudyPlace(name=name, storage=storage)
    with libraries_quiet():
        from study.storage import read_design
        from study.stored_design import design_of, run_of

        stored, target = read_design(place, machine_config.storage_retry_seconds)
        if not stored:
            raise BadInput(f"study {name!r} has no initstudy design yet: create it first with "
                           "`python -m study create` (or a search) with this `name`")
        design = design_of(stored, target)
        run = run_of(stored, data_dir, device)
    if isinstance(design, EdgeDesign):
        return edge_study(place, design, run, machine_config, progress, callbacks)
    if isinstance(design, DynamicsDesign):
        return dynamics_study(place, design, run, machine_config, progress, callbacks)
    return search_study(place, design, run, machine_config, progress, callbacks)


def edge(name: str, *, storage: str | None = None, progress: bool = True, callbacks=(), **settings) -> Edge:
    """Run (or continue) edge search `name` to its end and return it (`.table()`, `.figures()`,
    `.save(dir)` for edge.csv and the pictures, as `python -m study edge` writes them).

    settings: fields of `EdgeDesign` (every axis but lr as a tuple; lr as the ladder's rungs or a
    `Range` cut lr_step apart; reliability, unreliability, error_rate, max_seeds), of
    `MachineConfig` and of the run configuration (model, epochs, max_steps, ...). callbacks: as
    `search` takes them.
    """
    design, machine, *run_parts = _split(settings, (EdgeDesign, MachineConfig, *RUN_CLASSES),
                                         skip=axes.NAMES + ("seed",))
    return edge_study(StudyPlace(name=name, storage=storage), design, RunConfig(*run_parts), machine, progress,
                      callbacks)


def edge_study(place: StudyPlace, design: EdgeDesign, run: RunConfig, machine: MachineConfig = MachineConfig(),
               progress: bool = True, callbacks=()) -> Edge:
    """`edge` from the configuration dataclasses (the command line's way in)."""
    with _call(run.train.backend):
        _start_workers_early(run, machine)
        from study.edge_search import EdgeSearch
        from study.runner import run_study

        optuna_study = run_study(place, design, run, machine, progress, driver=EdgeSearch, activations=True,
                                 callbacks=callbacks, when_a_core_is_free=Edge.import_libraries)
        return Edge(optuna_study, place, design)


def dynamics(name: str = "dynamics", *, storage: str | None = None, progress: bool = True, callbacks=(),
             **settings) -> Dynamics:
    """Train every seed of every setting and rate given to its end, measuring its first `steps`
    (loss, lambda_max, lr x lambda_max / (2 (1 + momentum)), gradient norm) and classing its
    outcome (`study.experiments.dynamics`); the stored study (`.steps()`, `.outcomes()`,
    `.outcome_summary()`). Calling again trains nothing.

    settings: fields of `DynamicsDesign` (the axes as tuples, seeds, steps, catapult_factor,
    train_threshold), of `MachineConfig` and of the run configuration (model, max_steps, ...)."""
    design, machine, *run_parts = _split(settings, (DynamicsDesign, MachineConfig, *RUN_CLASSES),
                                         skip=axes.NAMES + ("seed",))
    return dynamics_study(StudyPlace(name=name, storage=storage), design, RunConfig(*run_parts), machine, progress,
                          callbacks)


def dynamics_study(place: StudyPlace, design: DynamicsDesign, run: RunConfig, machine: MachineConfig = MachineConfig(),
                   progress: bool = True, callbacks=()) -> Dynamics:
    """`dynamics` from the configuration dataclasses (the command line's way in)."""
    with _call(run.train.backend):
        _start_workers_early(run, machine)
        from study.experiments.dynamics import DynamicsSearch
        from study.runner import run_study

        return Dynamics(run_study(place, design, run, machine, progress, driver=DynamicsSearch, callbacks=callbacks,
                                  when_a_core_is_free=Dynamics.import_libraries), place)


def load(name: str = "quick", storage: str | None = None) -> Study:
    """A stored study, for reading; BadInput naming the studies there when it is absent."""
    place = StudyPlace(name=name, storage=storage)
    with libraries_quiet():
        from study.storage import load_existing_study

        return Study(load_existing_study(place), place)


def train(progress: bool = False, **settings):
    """Train one configuration; a `TrainResult` (val_acc, test_acc, diverged, layers, history, ...).

    settings: fields of the run configuration (model, leak, sub, init_scale, seed, lr, epochs, ...).
    """
    run = RunConfig(*_split(settings, RUN_CLASSES))
    with _call(run.train.backend):
        from study.training import train as train_run

        return train_run(run, progress=progress)


def sharpness(seeds=(0,), steps: int = 0, progress: bool = False, **settings):
    """lambda_max of the loss Hessian on each seed's first batch, at initialisation and after each of
    the first `steps` optimiser steps: a DataFrame, one row per (seed, step) with seed, step, loss,
    lambda_max, stable_lr_bound (2 (1 + momentum) / lambda_max), iterations, converged.

    settings: fields of the run configuration (model, leak, sub, lr, momentum, ...; not seed)."""
    if steps < 0:
        raise FieldError("steps", f"must be >= 0, got {steps}")
    seeds = StudyDesign(seeds=seeds).seeds
    run = RunConfig(*_split(settings, RUN_CLASSES, refused=("seed",)))
    with _call(run.train.backend):
        import pandas as pd

        from study.experiments.sharpness import sharpness as measure

        points = [point for seed in seeds
                  for point in measure(dataclasses.replace(run, train=dataclasses.replace(run.train, seed=seed)),
                                       steps, progress=progress)]
        return pd.DataFrame([point.to_dict() for point in points])


def signal(settings=None, *, depth: int = 30, width: int = 512, init_scale: float = 1.0,
           bias_init: str = "default", seeds=(0, 1, 2), batch: int = 256, out_dir: str | Path | None = None,
           progress: bool = False, **data):
    """Signal propagation through a deep MLP at initialisation, measured in float64 against the
    mean-field prediction (`study.experiments.signal`): a DataFrame, one row per (leak, sub, seed,
    layer) with mean, var, correlation, grad_norm, and the prediction's rows with seed "mean-field".
    With `out_dir`, signal.csv and signal.png are written there too.

    settings: (leak, sub) pairs; None is ReLU and the lesson's four (`SIGNAL_SETTINGS`). data: fields
    of `DataConfig` (data_dir, n_val, split_seed): the batch is the first `batch` training images."""
    for name, value, least in (("depth", depth, 1), ("width", width, 1), ("batch", batch, 2)):
        if value < least:
            raise FieldError(name, f"must be >= {least}, got {value}")
    for leak, sub in settings or ((0.0, 0.0),):  # checks the values, naming the field
        ModelConfig(model="mlp", leak=leak, sub=sub, init_scale=init_scale, bias_init=bias_init)
    seeds, data_config = StudyDesign(seeds=seeds).seeds, DataConfig(**data)
    with _call("torch"):
        from study.data import load_fashion_mnist
        from study.experiments.signal import SIGNAL_SETTINGS, SignalNet, run_signal, signal_frame

        data = load_fashion_mnist(data_config)
        net = SignalNet(depth, width, init_scale, bias_init)
        profiles, predictions = run_signal(data.x_train[:batch], data.y_train[:batch],
                                           tuple(settings or SIGNAL_SETTINGS), seeds, net, progress=progress)
        frame = signal_frame(profiles, predictions)
        if out_dir is not None:
            from study.experiments.signal import save_signal

            save_signal(frame, profiles, predictions, net, seeds, min(batch, len(data.x_train)), Path(out_dir))
        return frame


def findings(quick: bool = False, out_dir: str | Path | None = None, progress: bool = True, **machine) -> Path:
    """Run (or resume) the findings studies and write findings.md with its figures; its path.

    quick: a small MLP and grid, minutes instead of about 90. out_dir: default docs (studies/findings-quick
    with `quick`). machine: fields of `MachineConfig` (workers, population, ...)."""
    (machine_config,) = _split(machine, (MachineConfig,))
    with _call("torch"):
        from study.experiments.findings import FULL, QUICK, write_findings

        out = Path(out_dir or ("studies/findings-quick" if quick else "docs"))
        return write_findings(QUICK if quick else FULL, out, machine_config, progress=progress)


def _start_workers_early(run: RunConfig, machine: MachineConfig) -> None:
    """Where the study will have workers, start their fork server before this process imports torch
    and the runner: both imports then run at once, on two cores (`study.fork_server`). With device
    auto on a machine whose GPU then trains in this process, the server idles until exit."""
    device_type = "cpu" if run.train.device in ("auto", "cpu") else "cuda"
    if machine.has_workers(device_type):
        from study import fork_server

        fork_server.start()


@contextlib.contextmanager
def _call(backend: str) -> Iterator[None]:
    """What every call that trains or reads a study sets for its length (see the module docstring)."""
    prepare_backend(backend)
    with interrupts.stop_requests(), libraries_quiet():
        yield


def _split(settings: dict, classes: tuple, skip: tuple[str, ...] = (), refused: tuple[str, ...] = ()) -> list:
    """One instance of each class, each keyword going to the first class with a field of its name;
    a name in `skip` is refused unless the first class has it (search's leak is the design's), a
    name in `refused` always."""
    names = [[f.name for f in dataclasses.fields(cls)] for cls in classes]
    owners = {}
    for index, fields in enumerate(names):
        for name in fields:
            if name not in owners and name not in refused and (index == 0 or name not in skip):
                owners[name] = index
    given = [{} for _ in classes]
    for key, value in settings.items():
        if key not in owners:
            raise BadInput(f"unknown setting {key!r}: choose from {', '.join(owners)}")
        given[owners[key]][key] = value
    return [cls(**kwargs) for cls, kwargs in zip(classes, given)]


def prepare_backend(backend: str) -> None:
    """Before anything trains: Triton's interpreter where the fused kernel has no GPU to run on.
    Triton reads TRITON_INTERPRET when it is first imported (torch._dynamo imports it too)."""
    if backend == "triton":
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
