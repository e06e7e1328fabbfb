"""The Optuna study: one trial = one (init_scale, leak, sub) setting trained once per seed.

Trials live in any Optuna RDB storage (SQLite by default). The study stores its configuration in a
user attribute and refuses to continue under another one. `--n-trials` is the study's target count
of COMPLETE trials: running the same command again continues to it. A diverged seed is a result:
its trial is COMPLETE with the chance-level accuracy it reached.

Per trial, user attributes hold every seed's record (`seed_<n>`, written as each seed finishes) and
the summary across seeds (`mean_val_acc`, `acc_std`, `worst_acc`, `frac_trained`, ...). Each seed's
activation pictures are uploaded as artifacts, and a Markdown note summarises the trial.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta, upload_artifact
from optuna.trial import TrialState
from optuna_dashboard import save_note
from tqdm.auto import tqdm

from study import __version__
from study.config import (CONFIG_ATTR, PER_TRIAL_OR_MACHINE, SEARCHED, ModelConfig, RunConfig, SearchConfig,
                          TrainConfig, upgrade_stored_config)
from study.data import load_fashion_mnist
from study.errors import BadInput
from study.plots import save_activation_figure
from study.population import train_population
from study.masking import mask_url
from study.storage import open_storage, prepare_for_workers, sqlite_path
from study.train import TrainResult, resolve_device, train

MAX_FAILS_PER_SETTING = 3  # a setting that failed this often (a bug, not a crash) is not retried again
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
NOT_COMPARED = ("code_version",)  # recorded in the study, but a new release may continue a study

# ERROR: Optuna's "Trial N failed" warning carries a traceback; the command line says it in one line.
optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Trials are asked and told here, with their heartbeats kept by `Heartbeats` (see `_run_trials`).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@dataclass
class Paths:
    """Where a study keeps what is not in the storage itself."""

    out_dir: Path  # heatmaps, report
    artifacts: Path  # the FileSystemArtifactStore of the activation pictures


def study_paths(search: SearchConfig) -> Paths:
    """studies/NAME/ beside a SQLite database (or under ./studies for a server storage)."""
    db = sqlite_path(search.storage_url())
    base = (db.parent if db is not None else Path("studies")) / search.name
    return Paths(out_dir=base, artifacts=base / "artifacts")


def study_config(search: SearchConfig, run: RunConfig) -> dict:
    """What decides a study's results, whole: stored in the study and compared when it is continued.

    Every field of the run's configuration counts, except the searched ones and the seed (they are
    each trial's own) and the device (where a worker runs, not what the study is). A field added
    later is compared without a change here.
    """
    model = {k: v for k, v in asdict(run.model).items() if k not in SEARCHED}
    train = {k: v for k, v in asdict(run.train).items() if k not in PER_TRIAL_OR_MACHINE}
    config = {
        "space": {space.name: space.describe() for space in search.spaces()},
        "sampler": search.sampler,
        "objective": search.objective,
        "seeds": list(search.seed_list()),
        "train_threshold": search.train_threshold,
        "model": model,
        "optim": asdict(run.optim),
        "data": asdict(run.data),
        "train": train,
        "code_version": __version__,
    }
    return json.loads(json.dumps(config))  # tuples as lists, as they come back from storage


def config_differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Human-readable differences, e.g. ["space.leak: stored 0,0.1, asked 0,0.2"]."""
    differences = []
    for key in sorted(set(stored) | set(wanted)):
        if key in NOT_COMPARED:
            continue
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: stored {old}, asked {new}")
    return differences


def open_study(search: SearchConfig, run: RunConfig, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Load the study named `search.name` (refusing a different configuration) or create it.

    Several commands may start on one new study at once: the one that loses the race to create it
    loads it, and waits briefly for the winner to store the configuration.
    """
    wanted = study_config(search, run)
    directions = ["maximize", "minimize"] if search.objective == "stability" else ["maximize"]
    if search.name not in optuna.get_all_study_names(storage):
        try:
            study = optuna.create_study(study_name=search.name, storage=storage, directions=directions,
                                        sampler=_sampler(search))
            study.set_metric_names(["mean_val_acc", "acc_std"][:len(directions)])  # shown by the dashboard
            study.set_user_attr(CONFIG_ATTR, wanted)
            return study
        except optuna.exceptions.DuplicatedStudyError:
            pass
    study = optuna.load_study(study_name=search.name, storage=storage, sampler=_sampler(search))
    stored = study.user_attrs.get(CONFIG_ATTR)
    for _ in range(20):
        if stored is not None or study.trials:
            break
        time.sleep(0.5)  # a racing command created the study and is about to store its configuration
        stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise BadInput(f"study {search.name!r} in {mask_url(search.storage_url())} was not made by initstudy: "
                       "use another --name")
    differences = config_differences(upgrade_stored_config(stored), wanted)
    if differences:
        raise BadInput(f"study {search.name!r} was run with another configuration ({'; '.join(differences)}): "
                       "run it with its own flags, or use another --name")
    return study


def grid_points(search: SearchConfig) -> list[dict[str, float]]:
    """Every grid point, in a fixed shuffled order so that a partial grid covers the space evenly."""
    spaces = search.spaces()
    points = [dict(zip(SEARCHED, values)) for values in product(*(s.choices for s in spaces))]
    random.Random(0).shuffle(points)
    return points


def point_of(trial: optuna.trial.FrozenTrial) -> tuple:
    """A trial's setting (init_scale, leak, sub); a WAITING trial's comes from its queued params."""
    params = trial.system_attrs.get("fixed_params", trial.params)
    return tuple(params.get(name) for name in SEARCHED)


def requeue(study: optuna.Study, search: SearchConfig) -> int:
    """Queue the settings the study still needs and no live (COMPLETE, RUNNING, WAITING) trial holds,
    as many as the target leaves room for. Returns how many were queued.

    Grid: every grid point (in `grid_points` order). Other samplers: the settings of FAIL trials,
    so a crashed or interrupted trial is retried with the same setting. Optuna's GridSampler would
    count FAIL trials as visited; this retries them. A setting that failed MAX_FAILS_PER_SETTING
    times is not queued again.
    """
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if t.state in LIVE]
    held = {point_of(t) for t in live}
    fails = Counter(point_of(t) for t in trials if t.state == TrialState.FAIL)
    if search.sampler == "grid":
        candidates = [tuple(p[name] for name in SEARCHED) for p in grid_points(search)]
    else:
        # A trial killed before its setting was sampled has no point to retry.
        candidates = list(dict.fromkeys(point_of(t) for t in trials
                                        if t.state == TrialState.FAIL and None not in point_of(t)))
    missing = [p for p in candidates if p not in held and fails[p] < MAX_FAILS_PER_SETTING]
    wanted = missing[:max(search.target_trials() - len(live), 0)]
    for point in wanted:
        study.enqueue_trial(dict(zip(SEARCHED, point)))
    return len(wanted)


def count_states(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def n_complete(study: optuna.Study) -> int:
    return count_states(study)[TrialState.COMPLETE]


def suggest(trial: optuna.Trial, search: SearchConfig) -> dict[str, float]:
    params = {}
    for space in search.spaces():
        if space.choices is not None:
            params[space.name] = trial.suggest_categorical(space.name, list(space.choices))
        else:
            params[space.name] = trial.suggest_float(space.name, space.low, space.high, log=space.log)
    return params


def seed_record(result: TrainResult) -> dict:
    """What a trial keeps of one seed's run."""
    return {
        "val_acc": result.val_acc, "test_acc": result.test_acc, "diverged": result.diverged,
        "diverged_step": result.diverged_step, "steps": result.steps, "seconds": round(result.seconds, 3),
        "final_loss": result.losses[-1] if result.losses else None, "layers": result.layers,
    }


def summarise(records: dict[int, dict], threshold: float) -> dict:
    """Across seeds: the numbers a trial is judged by. records: seed -> seed_record."""
    accs = [r["val_acc"] for r in records.values()]
    n_layers = len(next(iter(records.values()))["layers"])
    layers = []
    for index in range(n_layers):
        per_seed = [r["layers"][index] for r in records.values()]
        layers.append({key: statistics.fmean(layer[key] for layer in per_seed)
                       for key in ("mean", "std", "dead_frac", "dead_units")})
    return {
        "mean_val_acc": statistics.fmean(accs),
        "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "worst_acc": min(accs),
        "best_acc": max(accs),
        "frac_trained": sum(a > threshold for a in accs) / len(accs),
        "n_diverged": sum(r["diverged"] for r in records.values()),
        "mean_test_acc": statistics.fmean(r["test_acc"] for r in records.values()),
        "layers": layers,
        "seconds": round(sum(r["seconds"] for r in records.values()), 3),
    }


def trial_note(params: dict, records: dict[int, dict], summary: dict, threshold: float) -> str:
    lines = [
        f"## init_scale {params['init_scale']:g}, leak {params['leak']:g}, sub {params['sub']:g}",
        "",
        f"Mean validation accuracy **{summary['mean_val_acc']:.4f}** (std {summary['acc_std']:.4f} over "
        f"{len(records)} seeds), worst seed {summary['worst_acc']:.4f}; "
        f"{round(summary['frac_trained'] * len(records))} of {len(records)} seeds trained (val acc > {threshold}).",
        "",
        "| seed | val acc | test acc | diverged | last layer near-zero | dead units |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in records.items():
        last = r["layers"][-1]
        diverged = f"at step {r['diverged_step']}" if r["diverged"] else "no"
        lines.append(f"| {seed} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {diverged} | "
                     f"{last['dead_frac']:.3f} | {last['dead_units']} of {last['units']} |")
    return "\n".join(lines)


class Search:
    """Runs one study to its target: `open()` checks and opens the study, `work()` trains trials
    until the study holds its target of COMPLETE trials; `run()` does both."""

    def __init__(self, search: SearchConfig, run: RunConfig, progress: bool = True):
        self.search, self.run_config, self.progress = search, run, progress
        self.seeds = search.seed_list()
        self.paths = study_paths(search)

    def run(self) -> optuna.Study:
        return self.work(self.open())

    def open(self) -> optuna.Study:
        """Everything that can refuse the command, before anything is written, then the study."""
        self.data = load_fashion_mnist(self.run_config.data, resolve_device(self.run_config.train.device))
        db = sqlite_path(self.search.storage_url())
        if db is not None:
            _make_dir(db.parent)
        self.storage = open_storage(self.search.storage_url(), self.search.heartbeat_seconds,
                                    self.search.grace_seconds, self.search.storage_retry_seconds)
        study = open_study(self.search, self.run_config, self.storage)
        prepare_for_workers(self.search.storage_url())  # only once the study is known to be good
        _make_dir(self.paths.artifacts)
        return study

    def work(self, study: optuna.Study) -> optuna.Study:
        self.store = FileSystemArtifactStore(str(self.paths.artifacts))
        target = self.search.target_trials()
        population = self.search.population_size(resolve_device(self.run_config.train.device).type)
        self.bar = tqdm(total=target * len(self.seeds), initial=min(n_complete(study), target) * len(self.seeds),
                        unit="run", desc="study", disable=not self.progress, dynamic_ncols=True)
        try:
            while self._next_step(study, target):
                self._run_trials(study, target, population)
                self.bar.n = max(self.bar.n, min(n_complete(study), target) * len(self.seeds))
                self.bar.refresh()
        finally:
            self.bar.close()
        return study

    def _next_step(self, study: optuna.Study, target: int) -> bool:
        """True when this worker should run a trial now; False when the study is done. Waits while
        the settings left are held by RUNNING trials (other workers, or a killed one not yet stale)."""
        while True:
            optuna.storages.fail_stale_trials(study)
            requeue(study, self.search)
            states = count_states(study)
            complete, running, waiting = (states[s] for s in (TrialState.COMPLETE, TrialState.RUNNING,
                                                              TrialState.WAITING))
            if complete >= target:
                return False
            if waiting or (self.search.sampler != "grid" and complete + running < target):
                return True
            if not running:
                raise BadInput(f"study {self.search.name!r} cannot reach {target} COMPLETE trials: settings "
                               f"failed {MAX_FAILS_PER_SETTING} times each are not retried; see its FAIL trials")
            # Short: the study is often done moments later, and the command waits for every worker.
            time.sleep(1)

    def _run_trials(self, study: optuna.Study, target: int, size: int) -> None:
        """Up to `size` trials asked at once and their seeds trained: one run at a time when `size` is 1,
        else all of them as one population. Every seed is stored as its model finishes, every trial
        told when its seeds are done.

        Ask and tell, not Study.optimize: when the storage itself fails, optimize's own attempt to
        record the failure fails too and hides the cause; here the cause is what reaches the user."""
        states = count_states(study)
        room = states[TrialState.WAITING] if self.search.sampler == "grid" else \
            target - states[TrialState.COMPLETE] - states[TrialState.RUNNING]
        asked, trials, told = [], [], set()
        try:
            for _ in range(max(1, min(size, room))):
                trial = study.ask()
                asked.append(trial)
                try:
                    trials.append((trial, self._start(trial)))
                except optuna.TrialPruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    told.add(trial.number)
            # `_trial_id`: Optuna has no public name for it; its own heartbeat thread uses the same.
            with Heartbeats(self.storage, [trial._trial_id for trial, _ in trials], self.search.heartbeat_seconds):
                records = {trial.number: self._reuse_stored(trial, params) for trial, params in trials}
                models = [(trial, params, seed) for trial, params in trials for seed in self.seeds
                          if seed not in records[trial.number]]

                def store(index: int, result: TrainResult) -> None:
                    trial, params, seed = models[index]
                    records[trial.number][seed] = self._store_seed(trial, params, seed, result)

                if size == 1:
                    for index, (_, params, seed) in enumerate(models):
                        self.bar.set_description(f"scale {params['init_scale']:.3g} leak {params['leak']:.3g} "
                                                 f"sub {params['sub']:.3g} seed {seed}")
                        store(index, train(self._run_config(params, seed), self.data))
                elif models:
                    self.bar.set_description(f"{len(models)} models ({len(trials)} settings) at once")
                    train_population([self._run_config(params, seed) for _, params, seed in models], self.data,
                                     on_result=store)
            for trial, params in trials:
                values = self._finish(trial, params, records[trial.number])
                study.tell(trial, values)
                told.add(trial.number)
        except BaseException:
            # As Study.optimize does for its trial: an interrupted trial is FAIL, and its stored seeds
            # are reused when its setting is retried. If the storage refuses even that, the trial's
            # heartbeat stops and the next command fails it as stale.
            for trial in asked:
                if trial.number not in told:
                    with contextlib.suppress(Exception):
                        study.tell(trial, state=TrialState.FAIL)
            raise

    def _start(self, trial: optuna.Trial) -> dict:
        """The trial's setting; TrialPruned when another trial holds it."""
        params = suggest(trial, self.search)
        if self._held_elsewhere(trial, params):
            raise optuna.TrialPruned("another trial holds this setting")  # a race between workers
        return params

    def _reuse_stored(self, trial: optuna.Trial, params: dict) -> dict[int, dict]:
        """seed -> record of the seeds earlier, failed trials of this setting finished."""
        stored = stored_seed_results(trial.study, self.storage, params)
        records = {seed: self._reuse(trial, stored[seed], seed) for seed in self.seeds if seed in stored}
        self.bar.update(len(records))
        return records

    def _store_seed(self, trial: optuna.Trial, params: dict, seed: int, result: TrainResult) -> dict:
        record = seed_record(result)
        trial.set_user_attr(f"seed_{seed}", record)  # kept even if a later seed is interrupted
        self._upload_pictures(trial, result, params, seed)
        self.bar.update()
        return record

    def _finish(self, trial: optuna.Trial, params: dict, records: dict[int, dict]):
        """Summary attributes and note; returns the objective value(s)."""
        records = {seed: records[seed] for seed in self.seeds}
        summary = summarise(records, self.search.train_threshold)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        save_note(trial, trial_note(params, records, summary, self.search.train_threshold))
        self._show_best(trial.study, summary)
        if self.search.objective == "stability":
            return summary["mean_val_acc"], summary["acc_std"]
        return summary["mean_val_acc"]

    def _held_elsewhere(self, trial: optuna.Trial, params: dict) -> bool:
        """Whether a COMPLETE trial, or a RUNNING one that started first, has this trial's setting.
        Only grid points and retries must be unique; a sampler may choose to repeat a setting."""
        trials = trial.study.get_trials(deepcopy=False)
        this = next(t for t in trials if t.number == trial.number)
        if self.search.sampler != "grid" and "fixed_params" not in this.system_attrs:
            return False
        point = tuple(params[name] for name in SEARCHED)
        return any(point_of(t) == point and (t.state == TrialState.COMPLETE or
                                             (t.state == TrialState.RUNNING and t.number < trial.number))
                   for t in trials)

    def _reuse(self, trial: optuna.Trial, stored: "StoredSeed", seed: int) -> dict:
        """A seed finished by an earlier, failed trial of the same setting: its record and picture."""
        record = {**stored.record, "reused_from": stored.trial_number}
        trial.set_user_attr(f"seed_{seed}", record)
        if stored.artifact_id is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"activations_seed{seed}.png"
                download_artifact(artifact_store=self.store, artifact_id=stored.artifact_id, file_path=str(path))
                upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                mimetype="image/png")
        return record

    def _run_config(self, params: dict, seed: int) -> RunConfig:
        model: ModelConfig = replace(self.run_config.model, **params)
        train_config: TrainConfig = replace(self.run_config.train, seed=seed)
        return replace(self.run_config, model=model, train=train_config)

    def _upload_pictures(self, trial: optuna.Trial, result: TrainResult, params: dict, seed: int) -> None:
        title = (f"init_scale {params['init_scale']:g}, leak {params['leak']:g}, sub {params['sub']:g}, "
                 f"seed {seed}: val acc {result.val_acc:.3f}" + (" (diverged)" if result.diverged else ""))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"activations_seed{seed}.png"
            save_activation_figure(result.history, title, path)
            upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                            mimetype="image/png")

    def _show_best(self, study: optuna.Study, summary: dict) -> None:
        best = max([t.user_attrs.get("mean_val_acc", 0.0) for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))] + [summary["mean_val_acc"]])
        self.bar.set_postfix(best=f"{best:.3f}", refresh=False)


class Heartbeats:
    """While training, a heartbeat for each trial every `interval` seconds, as Study.optimize keeps
    for its one trial: when this worker is killed, its trials go stale and are failed and retried."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_ids: list[int], interval: float):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.enabled = getattr(storage, "get_heartbeat_interval", lambda: None)() is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> "Heartbeats":
        if self.enabled:
            self._record()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _record(self) -> None:
        for trial_id in self.trial_ids:
            self.storage.record_heartbeat(trial_id)


@dataclass
class StoredSeed:
    record: dict
    trial_number: int
    artifact_id: str | None  # its activation picture


def stored_seed_results(study: optuna.Study, storage: optuna.storages.BaseStorage,
                        params: dict) -> dict[int, StoredSeed]:
    """Seeds that FAIL trials of this setting finished before they stopped (the latest wins)."""
    point = tuple(params[name] for name in SEARCHED)
    stored = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if point_of(trial) != point:
            continue
        pictures = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(trial, storage=storage)}
        for key, record in trial.user_attrs.items():
            if not key.startswith("seed_"):
                continue
            seed = int(key.removeprefix("seed_"))
            first_run = record.get("reused_from", trial.number)  # where the seed was really trained
            clean = {k: v for k, v in record.items() if k != "reused_from"}
            stored[seed] = StoredSeed(clean, first_run, pictures.get(f"activations_seed{seed}.png"))
    return stored


def _sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    # Grid points are enqueued (enqueue_missing_grid_points), so the sampler of a grid study is
    # never asked; random/TPE are left unseeded so a resumed study does not replay its first draws.
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(multivariate=True)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=0)  # indexed by trial number: resumes continue the sequence
    return optuna.samplers.RandomSampler()


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create {directory}: {e.strerror}; choose a writable place") from e


def load_existing_study(search: SearchConfig) -> optuna.Study:
    """A stored study, for reading; BadInput naming the studies there when it is absent."""
    db = sqlite_path(search.storage_url())
    if db is not None and not db.is_file():
        raise BadInput(f"no study database at {db}: run 'python -m study search --name {search.name}' first")
    storage = open_storage(search.storage_url(), retry_seconds=search.storage_retry_seconds)
    names = optuna.get_all_study_names(storage)
    if search.name not in names:
        raise BadInput(f"no study {search.name!r} in {mask_url(search.storage_url())} "
                       f"(it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=search.name, storage=storage)
