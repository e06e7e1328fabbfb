"""The ask/train/tell loop of a study: one trial = one setting (a value per axis, `study.axes`)
trained once per seed.

`open_search` checks everything that can refuse the command before anything is written, then
creates or opens the study (`study.storage`); `Search.work` trains trials until the study holds its
target of COMPLETE trials (`StudyDesign.n_trials`): running the same command again continues to it.
Which trial comes next is `study.schedule`'s; what a trial stores is `study.records`'. A diverged
seed is a result: its trial is COMPLETE with the chance-level accuracy it reached; its training
loss is reported as intermediate values. Two drivers share the loop: `Search` (a study's grid or
sampler, every seed of `StudyDesign.seeds`) and `study.edge_search.EdgeSearch` (probes of a
learning-rate ladder, seeds added in rounds until the sequential test decides). With
`activations`, each seed's activation history is stored with its trial and its picture drawn only
when first seen (`study.histories`): the loop imports no plotting.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note
from tqdm import tqdm  # text bars: in a terminal, a log, and a notebook without ipywidgets alike

from study import axes, interrupts
from study.artifacts import artifact_store, check_artifacts
from study.axes import describe_setting
from study.config import RunConfig
from study.data import FashionMNIST, load_fashion_mnist
from study.design import MachineConfig, StudyDesign
from study.place import StudyPlace, make_dir, sqlite_path
from study.errors import BadInput
from study.histories import reuse_history, store_history
from study.population import train_population
from study.quiet import libraries_quiet
from study.records import (StoredSeed, fixed_values, loss_points, point, point_of, reused_record, seed_record,
                           stored_seed_results, summarise, summary_of, trial_note, write_seed, write_summary,
                           write_target)
from study.schedule import (MAX_FAILS_PER_SETTING, Heartbeats, ask_queued, count_states, fail_stale_and_requeue,
                            held_elsewhere, make_sampler, n_complete, requeue, suggest)
from study.storage import open_storage, open_study, prepare_for_workers
from study.training import TrainResult, resolve_device, step_count, train
from study.workers import run_workers, wait_for_others, worker_data

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]  # as Study.optimize's callbacks


def run_study(place: StudyPlace, design, run: RunConfig, machine: MachineConfig = MachineConfig(),
              progress: bool = True, driver: type["Search"] | None = None, activations: bool = False,
              callbacks: Sequence[Callback] = (), when_a_core_is_free: Callable[[], None] = lambda: None) -> optuna.Study:
    """Run (or continue) a study to its target with `driver` (`Search` unless told: an edge search's
    is `study.edge_search.EdgeSearch`), here or in the worker processes `machine` asks for. With
    `activations`, each seed's activation history and picture-to-be are stored as artifacts of its
    trial (in the store `machine.artifacts` names; `study.histories`). Each `callbacks` entry is
    called as Optuna's `optimize` calls its callbacks, `callback(study, frozen_trial)`, after each
    trial is told, by the process that trained it (with workers: in the worker, so they must pickle).
    With workers, `when_a_core_is_free` is called as `study.workers.run_workers` says."""
    driver = _driver(design, driver)
    device_type = resolve_device(run.train.device).type
    if not machine.has_workers(device_type):
        return open_search(place, design, run, machine, progress, driver, activations, callbacks).work()
    runner: Search | None = None

    def prepare():  # while the workers start
        nonlocal runner
        shared = worker_data(run, machine, device_type)
        runner = open_search(place, design, run, machine, progress, driver, activations, callbacks, shared)
        runner.queue(runner.study)  # once, here: workers that start together would each queue the same trials
        return (place, design, machine, driver, activations, tuple(callbacks), shared), runner.show_progress

    try:  # this process watches: its bar follows the COMPLETE trials the workers store
        run_workers(work_here, prepare, run, machine, device_type, when_a_core_is_free)
    finally:
        if runner is not None:
            runner.bar.close()
    return runner.study


def work_here(place: StudyPlace, design, machine: MachineConfig, driver: type["Search"],
              activations: bool, callbacks: tuple[Callback, ...], data: FashionMNIST | None, run: RunConfig) -> None:
    """A worker process's share of a study (its entry point): the loop on this process, without a bar;
    `data`: the starting process's, where it can be shared."""
    with libraries_quiet():
        open_search(place, design, run, machine, False, driver, activations, callbacks, data).work()


def open_search(place: StudyPlace, design, run: RunConfig, machine: MachineConfig = MachineConfig(),
                progress: bool = True, driver: type["Search"] | None = None,
                activations: bool = False, callbacks: Sequence[Callback] = (),
                data: FashionMNIST | None = None) -> "Search":
    """Everything that can refuse the command, before anything is written, then the study and its
    driver (`Search` unless told). `data`: `run.data` loaded already (by the starting process)."""
    data = data if data is not None else load_fashion_mnist(run.data, resolve_device(run.train.device))
    check_artifacts(machine.artifacts)
    study, storage = _open(place, design, run, machine)
    store = artifact_store(machine.artifacts, place)  # its directory made only once the study is good
    return _driver(design, driver)(study, storage, design, run, machine, data, store, progress, activations,
                                   tuple(callbacks))


def create_study(place: StudyPlace, design, run: RunConfig, machine: MachineConfig = MachineConfig()) -> optuna.Study:
    """Create the study (or check that the stored one has this design) and queue a grid's points,
    training nothing: machines then join it with `python -m study work` (`study.stored_design`)."""
    study, _ = _open(place, design, run, machine)
    if isinstance(design, StudyDesign):
        requeue(study, design)
    return study


def _open(place: StudyPlace, design, run: RunConfig, machine: MachineConfig):
    """The study and its storage, the study created or checked against `design`; its target stored."""
    db = sqlite_path(place.storage_url())
    if db is not None:
        make_dir(db.parent)
    storage = open_storage(place.storage_url(), machine.heartbeat_seconds, machine.grace_seconds,
                           machine.storage_retry_seconds)
    study = open_study(place, design, run, storage, make_sampler(design))
    prepare_for_workers(place.storage_url())  # only once the study is known to be good
    if getattr(design, "n_trials", None) is not None:
        write_target(study, design.n_trials)
    return study, storage


def _driver(design, driver: type["Search"] | None) -> type["Search"]:
    if driver is not None:
        return driver
    if type(design) is not StudyDesign:
        raise TypeError(f"a {type(design).__name__} needs its driver, e.g. study.edge_search.EdgeSearch")
    return Search


class Search:
    """Trains an open study's trials, on this process, until the study holds its target of COMPLETE
    trials. Made by `open_search`, which has checked the study and loaded the data."""

    _bar_unit = "run"

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, design: StudyDesign,
                 run: RunConfig, machine: MachineConfig, data: FashionMNIST, store, progress: bool,
                 activations: bool = False, callbacks: tuple[Callback, ...] = ()):
        self.study, self.storage, self.design, self.run_config = study, storage, design, run
        self.activations, self.callbacks, self.data, self.seeds = activations, callbacks, data, design.seeds
        self.store = store  # an Optuna artifact store (`study.artifacts`)
        self.population = machine.population_size(resolve_device(run.train.device).type, self._models_per_trial())
        self.bar = tqdm(total=self._bar_total(), unit=self._bar_unit, desc="study", disable=not progress,
                        dynamic_ncols=True, delay=0.1)

    def work(self) -> optuna.Study:
        study = self.study
        self.show_progress()
        try:
            while self._next_step(study):
                self._run_trials(study, self.population)
                self.show_progress()
        finally:
            self.bar.close()
        return study

    def show_progress(self) -> None:
        """The bar at the runs of the study's COMPLETE trials (read from the storage)."""
        self.bar.n = max(self.bar.n, min(n_complete(self.study), self.design.target_trials()) * len(self.seeds))
        self.bar.refresh()

    def _bar_total(self) -> int:
        return self.design.target_trials() * len(self.seeds)

    def _models_per_trial(self) -> int:
        return len(self.seeds)

    def _room(self, states: Counter) -> int:
        """How many trials to ask now."""
        if self.design.sampler == "grid":
            return states[TrialState.WAITING]
        return self.design.target_trials() - states[TrialState.COMPLETE] - states[TrialState.RUNNING]

    def _seed_pool(self, trial: optuna.Trial) -> tuple[int, ...]:
        """The seeds the trial may hold: the design's."""
        return self.seeds

    def _seeds_to_train(self, trial: optuna.Trial, records: dict[int, dict]) -> list[int]:
        """The seeds a trial trains next, given those it holds: every seed of the design, at once."""
        return [seed for seed in self.seeds if seed not in records]

    def queue(self, study: optuna.Study) -> Counter:
        """Fail the trials whose worker went silent, queue the settings the study still needs; the
        trial states."""
        return fail_stale_and_requeue(study, self.design)

    def _next_step(self, study: optuna.Study) -> bool:
        """True when this worker should run a trial now; False when the study is done. Waits while
        the settings left are held by RUNNING trials (other workers, or a killed one not yet stale)."""
        target = self.design.target_trials()
        while True:
            interrupts.check()  # between trials, and while waiting for other workers
            states = self.queue(study)
            complete, running, waiting = (states[s] for s in (TrialState.COMPLETE, TrialState.RUNNING,
                                                              TrialState.WAITING))
            if complete >= target:
                return False
            if waiting or (self.design.sampler != "grid" and complete + running < target):
                return True
            if not running:
                raise BadInput(f"study {self.study.study_name!r} cannot reach {target} COMPLETE trials: settings "
                               f"failed {MAX_FAILS_PER_SETTING} times each are not retried; see its FAIL trials")
            # Short: the study is often done moments later (a worker of `run_workers` is told at once).
            wait_for_others(1)

    def _run_trials(self, study: optuna.Study, size: int) -> None:
        """Up to `size` trials asked at once and their seeds trained, in rounds (`_seeds_to_train`):
        one run at a time when `size` is 1, else each round as one population. Every seed is stored
        as its model finishes, every trial told when its seeds are done.

        Ask and tell, not Study.optimize: when the storage itself fails, optimize's own attempt to
        record the failure fails too and hides the cause; here the cause is what reaches the user."""
        asked, trials, told = [], [], set()
        try:
            for _ in range(max(1, min(size, self._room(count_states(study))))):
                if (trial := ask_queued(study) if self.design.sampler == "grid" else study.ask()) is None:
                    break  # another worker took the last queued trial
                asked.append(trial)
                # At once, so that the trial is judged by heartbeats (the database's clock) from its start.
                Heartbeats(self.storage, [trial._trial_id]).beat()
                try:
                    trials.append((trial, self._start(trial)))
                except optuna.TrialPruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    told.add(trial.number)
            # `_trial_id`: Optuna has no public name for it; its own heartbeat thread uses the same.
            with Heartbeats(self.storage, [trial._trial_id for trial, _ in trials]):
                records = {trial.number: self._reuse_stored(trial, params) for trial, params in trials}
                while models := [(trial, params, seed) for trial, params in trials
                                 for seed in self._seeds_to_train(trial, records[trial.number])]:
                    self._train_round(models, records, size)
            for trial, params in trials:
                values = self._finish(trial, params, records[trial.number])
                study.tell(trial, values)
                told.add(trial.number)
                for callback in self.callbacks:
                    callback(study, self.storage.get_trial(trial._trial_id))
        except BaseException:
            # As Study.optimize does for its trial: an interrupted trial is FAIL, and its stored seeds
            # are reused when its setting is retried. If the storage refuses even that, the trial's
            # heartbeat stops and the next command fails it as stale.
            for trial in asked:
                if trial.number not in told:
                    with contextlib.suppress(Exception):
                        study.tell(trial, state=TrialState.FAIL)
            raise

    def _train_round(self, models: list[tuple[optuna.Trial, dict, int]], records: dict[int, dict[int, dict]],
                     size: int) -> None:
        """Train (trial, params, seed) `models`, each seed stored into `records` as it finishes."""
        def store(index: int, result: TrainResult) -> None:
            trial, params, seed = models[index]
            records[trial.number][seed] = self._store_seed(trial, params, seed, result)

        if size == 1:
            for index, (_, params, seed) in enumerate(models):
                self.bar.set_description(f"{describe_setting(params)} seed {seed}")
                store(index, train(self._run_config(params, seed), self.data))
        else:  # the members of a population share one optimiser: a population per optimiser setting
            groups: dict[tuple, list[int]] = {}
            for index, (_, params, _) in enumerate(models):
                groups.setdefault(tuple(params[name] for name in axes.OPTIM), []).append(index)
            for indices in groups.values():
                self.bar.set_description(f"{len(indices)} models at once")
                train_population([self._run_config(*models[i][1:]) for i in indices], self.data,
                                 on_result=lambda j, result, indices=indices: store(indices[j], result))

    def _start(self, trial: optuna.Trial) -> dict:
        """The trial's setting; TrialPruned when another trial holds it."""
        params = suggest(trial, self.design)
        fixed = fixed_values(trial.study)
        if held_elsewhere(trial, lambda t: point_of(t, fixed), always=self.design.sampler == "grid"):
            raise optuna.TrialPruned("another trial holds this setting")  # a race between workers
        return params

    def _reuse_stored(self, trial: optuna.Trial, params: dict) -> dict[int, dict]:
        """seed -> record of the seeds earlier, failed trials of this setting finished."""
        stored = stored_seed_results(trial.study, self.storage, point(params))
        records = {seed: self._reuse(trial, stored[seed], seed) for seed in self._seed_pool(trial) if seed in stored}
        self._seeds_stored(len(records))
        return records

    def _store_seed(self, trial: optuna.Trial, params: dict, seed: int, result: TrainResult, extra=None) -> dict:
        record = {**seed_record(result), **(extra or {})}  # extra: what a driver measured beside the result
        losses = {}
        if self.design.objective == "accuracy":  # Optuna keeps intermediate values for one objective only
            losses = loss_points(seed, result.losses, step_count(self._run_config(params, seed), len(self.data.y_train)))
        write_seed(self.storage, trial, seed, record, losses)
        if self.activations:
            title = f"{describe_setting(params)}, seed {seed}: val acc {result.val_acc:.3f}"
            store_history(self.store, trial, seed, result.history, title + (" (diverged)" if result.diverged else ""))
        self._seeds_stored(1)
        return record

    def _seeds_stored(self, count: int) -> None:
        self.bar.update(count)

    def _summary(self, records: dict[int, dict]) -> dict:
        return summarise({seed: records[seed] for seed in self.seeds}, self.design.train_threshold)

    def _finish(self, trial: optuna.Trial, params: dict, records: dict[int, dict]):
        """Summary attributes and note; returns the objective value(s)."""
        summary = self._summary(records)
        write_summary(trial, summary)
        save_note(trial, trial_note(params, dict(sorted(records.items())), summary, self.design.train_threshold))
        self._show_best(trial.study, summary)
        if self.design.objective == "stability":
            return summary["mean_val_acc"], summary["acc_std"]
        return summary["mean_val_acc"]

    def _reuse(self, trial: optuna.Trial, stored: StoredSeed, seed: int) -> dict:
        """A seed finished by an earlier, failed trial of the same setting: its record, history and
        picture. A picture the store lacks never fails the trial (`records.reused_record`)."""
        found = stored.artifacts is None or reuse_history(self.store, trial, seed, *stored.artifacts)
        record = reused_record(stored, found)
        write_seed(self.storage, trial, seed, record)
        return record

    def _run_config(self, params: dict, seed: int) -> RunConfig:
        return self.run_config.at(params, seed)

    def _show_best(self, study: optuna.Study, summary: dict) -> None:
        best = max([summary_of(t).get("mean_val_acc", 0.0) for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))] + [summary["mean_val_acc"]])
        self.bar.set_postfix(best=f"{best:.3f}", refresh=False)

