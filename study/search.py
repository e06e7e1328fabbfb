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

import json
import random
import sqlite3
import statistics
import tempfile
import warnings
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from optuna_dashboard import save_note
from tqdm.auto import tqdm

from study import __version__
from study.config import SEARCHED, ModelConfig, RunConfig, SearchConfig, TrainConfig
from study.data import load_fashion_mnist
from study.errors import BadInput
from study.plots import save_activation_figure
from study.train import TrainResult, resolve_device, train

CONFIG_ATTR = "initstudy_config"
HEARTBEAT_SECONDS = 60  # a RUNNING trial whose process stops beating for GRACE_SECONDS is failed
GRACE_SECONDS = 180
NOT_COMPARED = ("code_version",)  # recorded in the study, but a new release may continue a study

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def study_config(search: SearchConfig, run: RunConfig) -> dict:
    """What decides a study's results; stored in the study and compared when it is continued."""
    model = {k: v for k, v in asdict(run.model).items() if k not in SEARCHED}
    return {
        "space": {space.name: space.describe() for space in search.spaces()},
        "sampler": search.sampler,
        "objective": search.objective,
        "seeds": list(search.seed_list()),
        "train_threshold": search.train_threshold,
        "model": json.loads(json.dumps(model)),  # tuples as lists, as they come back from storage
        "optim": asdict(run.optim),
        "data": asdict(run.data),
        "stats_every": run.train.stats_every,
        "diverge_loss": run.train.diverge_loss,
        "code_version": __version__,
    }


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


def open_storage(search: SearchConfig) -> optuna.storages.RDBStorage:
    url = search.storage_url()
    db = sqlite_path(url)
    if db is not None:
        _check_sqlite_file(db)
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    except Exception as e:  # sqlalchemy's errors for bad URLs, missing drivers, unreachable servers
        raise BadInput(f"cannot open storage {url}: {_first_line(e)}") from e


def open_study(search: SearchConfig, run: RunConfig, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Load the study named `search.name` (refusing a different configuration) or create it."""
    wanted = study_config(search, run)
    directions = ["maximize", "minimize"] if search.objective == "stability" else ["maximize"]
    if search.name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=search.name, storage=storage, sampler=_sampler(search))
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            raise BadInput(f"study {search.name!r} in {search.storage_url()} was not made by initstudy: use another --name")
        differences = config_differences(stored, wanted)
        if differences:
            raise BadInput(f"study {search.name!r} was run with another configuration ({'; '.join(differences)}): "
                           "run it with its own flags, or use another --name")
        return study
    study = optuna.create_study(study_name=search.name, storage=storage, directions=directions,
                                sampler=_sampler(search))
    study.set_metric_names(["mean_val_acc", "acc_std"][:len(directions)])  # shown by the dashboard
    study.set_user_attr(CONFIG_ATTR, wanted)
    return study


def grid_points(search: SearchConfig) -> list[dict[str, float]]:
    """Every grid point, in a fixed shuffled order so that a partial grid covers the space evenly."""
    spaces = search.spaces()
    points = [dict(zip(SEARCHED, values)) for values in product(*(s.choices for s in spaces))]
    random.Random(0).shuffle(points)
    return points


def enqueue_missing_grid_points(study: optuna.Study, search: SearchConfig) -> int:
    """Queue grid points that no COMPLETE, RUNNING or WAITING trial holds, as many as the target
    still needs (in `grid_points` order).

    Optuna's GridSampler would count FAIL trials as visited; this retries them. Returns how many
    points were queued.
    """
    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))
    held = set()
    for trial in live:
        params = trial.system_attrs.get("fixed_params", trial.params)
        held.add(tuple(params.get(name) for name in SEARCHED))
    missing = [p for p in grid_points(search) if tuple(p[name] for name in SEARCHED) not in held]
    wanted = missing[:max(search.target_trials() - len(live), 0)]
    for point in wanted:
        study.enqueue_trial(point)
    return len(wanted)


def n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


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
    """Runs one study to its target; `run()` returns the study."""

    def __init__(self, search: SearchConfig, run: RunConfig, progress: bool = True):
        self.search, self.run_config, self.progress = search, run, progress
        self.seeds = search.seed_list()
        self.paths = study_paths(search)

    def run(self) -> optuna.Study:
        device = resolve_device(self.run_config.train.device)
        data = load_fashion_mnist(self.run_config.data, device)  # a bad data dir fails before any storage
        db = sqlite_path(self.search.storage_url())
        if db is not None:
            _make_dir(db.parent)
        storage = open_storage(self.search)
        study = open_study(self.search, self.run_config, storage)
        _make_dir(self.paths.artifacts)  # only once the study is known to be good
        optuna.storages.fail_stale_trials(study)
        target = self.search.target_trials()
        done = n_complete(study)
        if done >= target:
            return study
        if self.search.sampler == "grid":
            enqueue_missing_grid_points(study, self.search)

        self.store = FileSystemArtifactStore(str(self.paths.artifacts))
        self.data = data
        self.bar = tqdm(total=target * len(self.seeds), initial=done * len(self.seeds), unit="run",
                        desc="study", disable=not self.progress, dynamic_ncols=True)
        try:
            study.optimize(self._objective, n_trials=target - done,
                           callbacks=[optuna.study.MaxTrialsCallback(target, states=(TrialState.COMPLETE,))])
        finally:
            self.bar.close()
        return study

    def _objective(self, trial: optuna.Trial):
        params = suggest(trial, self.search)
        records: dict[int, dict] = {}
        for seed in self.seeds:
            self.bar.set_description(f"scale {params['init_scale']:.3g} leak {params['leak']:.3g} "
                                     f"sub {params['sub']:.3g} seed {seed}")
            result = train(self._run_config(params, seed), self.data)
            records[seed] = seed_record(result)
            trial.set_user_attr(f"seed_{seed}", records[seed])  # kept even if a later seed is interrupted
            self._upload_pictures(trial, result, params, seed)
            self.bar.update()

        summary = summarise(records, self.search.train_threshold)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        save_note(trial, trial_note(params, records, summary, self.search.train_threshold))
        self._show_best(trial.study, summary)
        if self.search.objective == "stability":
            return summary["mean_val_acc"], summary["acc_std"]
        return summary["mean_val_acc"]

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


def _check_sqlite_file(db: Path) -> None:
    """Refuse, before Optuna writes anything, a path that is a directory or a file that is not SQLite."""
    if db.is_dir():
        raise BadInput(f"{db} is a directory, not a SQLite file: pass --storage sqlite:///path/to/file.db")
    if db.exists():
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise BadInput(f"{db} is not a readable SQLite database ({e}): move it away or use another --name") from e


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__



def load_existing_study(search: SearchConfig) -> optuna.Study:
    """A stored study, for reading; BadInput naming the studies there when it is absent."""
    db = sqlite_path(search.storage_url())
    if db is not None and not db.is_file():
        raise BadInput(f"no study database at {db}: run '{'python -m study search'} --name {search.name}' first")
    storage = open_storage(search)
    names = optuna.get_all_study_names(storage)
    if search.name not in names:
        raise BadInput(f"no study {search.name!r} in {search.storage_url()} (it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=search.name, storage=storage)
