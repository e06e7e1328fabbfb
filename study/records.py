"""The record format of a seed, of a trial and of a study's stored configuration: written and read
here only.

A study keeps its design, whole, in the user attribute `initstudy_config` (`write_config`,
`stored_config`, which reads what earlier versions stored in today's layout). A trial keeps each
seed's record in the user attribute `seed_<n>` (written as that seed finishes, so an interrupted
trial keeps the seeds it finished), the summary across seeds as one user attribute per key, and a Markdown note for the dashboard. Each layer's statistics are those of its activations
at the last recorded step: `mean`, `std`, `near_zero_frac` (the share of |a| in the histogram's
lowest bin) and `dead_units` (units never positive on the batch). Studies written before 0.2.0 call
`near_zero_frac` `dead_frac`; `read_layer` reads both.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import optuna
import torch
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from study import axes
from study.axes import describe_setting
from study.design import CONFIG_ATTR, TRAIN_THRESHOLD, fixed_axis_values, upgrade_stored_config
from study.faults import ResilientStorage
from study.histories import history_name, picture_name
from study.ladder import setting_key
from study.reliability import clopper_pearson, t_interval
from study.training import TrainResult

SEED_PREFIX = "seed_"
LAYER_KEYS = ("mean", "std", "near_zero_frac", "dead_units")
OLD_NAMES = {"dead_frac": "near_zero_frac"}  # as stored before 0.2.0
CURVE_POINTS = 50  # intermediate values per seed: enough to see where a loss left, few database writes
TARGET_ATTR = "initstudy_n_trials"  # not part of the compared design: a re-run may raise it


def write_config(study: optuna.Study, config: dict) -> None:
    study.set_user_attr(CONFIG_ATTR, config)


def raw_config(study: optuna.Study) -> dict | None:
    """The configuration as stored, in the layout of the version that stored it; None if none is."""
    return study.user_attrs.get(CONFIG_ATTR)


def stored_config(study: optuna.Study) -> dict:
    """The study's stored configuration in today's layout ({} for a study initstudy did not make)."""
    return upgrade_stored_config(raw_config(study) or {})


def write_target(study: optuna.Study, n_trials: int) -> None:
    """The study's target of COMPLETE trials, as its last `search` or `create` set it (`work` reads it)."""
    study.set_user_attr(TARGET_ATTR, n_trials)


def stored_target(study: optuna.Study) -> int | None:
    return study.user_attrs.get(TARGET_ATTR)


def study_threshold(study: optuna.Study) -> float:
    """The validation accuracy above which the study counts a seed as trained."""
    return stored_config(study).get("train_threshold", TRAIN_THRESHOLD)


def is_trained(val_acc: float, threshold: float) -> bool:
    """Whether a seed trained: its validation accuracy above the study's threshold. The one rule."""
    return val_acc > threshold


def fixed_values(study: optuna.Study) -> dict[str, float]:
    """The axes the stored study holds at one value (see `point_of`)."""
    return fixed_axis_values(raw_config(study) or {})


def point(params: dict[str, float]) -> tuple:
    """A setting's point (a value per axis, `study.axes`) from its parameters."""
    return tuple(params[name] for name in axes.NAMES)


def point_of(trial: optuna.trial.FrozenTrial, fixed: dict[str, float] | None = None) -> tuple:
    """A trial's setting (a value per axis, `study.axes`); a WAITING trial's comes from its
    queued params. An axis the trial does not name (it was written before that axis was searched)
    takes its study's one value from `fixed` (`fixed_values`); None if it has none."""
    params = trial.system_attrs.get("fixed_params", trial.params)
    return tuple(params.get(name, (fixed or {}).get(name)) for name in axes.NAMES)


def setting_of(trial: optuna.trial.FrozenTrial, fixed: dict[str, float]) -> dict[str, float]:
    """A trial's setting as {axis: value}."""
    return dict(zip(axes.NAMES, point_of(trial, fixed)))


def seed_record(result: TrainResult) -> dict:
    """What a trial keeps of one seed's run, called by the process that trained it. `threads`: its
    CPU threads, without which a CPU seed cannot be reproduced bitwise (its float32 sums depend on
    them); records stored before 0.7.4 lack it."""
    return {
        "val_acc": result.val_acc, "test_acc": result.test_acc, "diverged": result.diverged,
        "diverged_step": result.diverged_step, "steps": result.steps, "seconds": round(result.seconds, 3),
        "final_loss": result.losses[-1] if result.losses else None, "layers": result.layers,
        "threads": torch.get_num_threads(),
    }


def loss_points(seed: int, losses: list[float], planned: int) -> dict[int, float]:
    """A seed's training loss (one per step of `planned`) as the trial's intermediate values, step ->
    loss, the seeds one after another on the step axis (seed x planned + step), about CURVE_POINTS per
    seed: the dashboard's learning curves show where a seed diverged."""
    stride = max(1, planned // CURVE_POINTS)
    return {seed * planned + step: float(losses[step])
            for step in sorted({*range(0, len(losses), stride), len(losses) - 1} - {-1})}


def write_seed(storage: ResilientStorage, trial: optuna.Trial, seed: int, record: dict,
               losses: dict[int, float] | None = None) -> None:
    """Stored as the seed finishes, with its loss points (`loss_points`) in the same transaction:
    kept even if a later seed of the trial is interrupted."""
    # `_trial_id`: Optuna has no public name for it.
    storage.set_trial_user_attr_and_intermediate_values(trial._trial_id, f"{SEED_PREFIX}{seed}", record, losses or {})


def write_summary(trial: optuna.Trial, summary: dict) -> None:
    for key, value in summary.items():
        trial.set_user_attr(key, value)


def summary_of(trial: optuna.trial.FrozenTrial) -> dict:
    """What `write_summary` stored for a told trial (`summarise`'s keys, and an edge probe's `verdict`);
    {} for a trial not told yet."""
    return {key: value for key, value in trial.user_attrs.items() if not key.startswith(SEED_PREFIX)}


def verdict_of(trial: optuna.trial.FrozenTrial) -> str | None:
    """An edge probe's verdict (`study.sequential`): "" for an adaptive probe, which has none; None for
    any other trial."""
    return trial.user_attrs.get("verdict")


def read_layer(layer: dict) -> dict:
    """A stored layer's statistics under today's names."""
    return {OLD_NAMES.get(key, key): value for key, value in layer.items()}


def seed_records(trial: optuna.trial.FrozenTrial) -> dict[int, dict]:
    """seed -> the record stored as `seed_<n>` when that seed finished, layers under today's names."""
    return {int(key.removeprefix(SEED_PREFIX)): {**value, "layers": [read_layer(x) for x in value["layers"]]}
            for key, value in trial.user_attrs.items() if key.startswith(SEED_PREFIX)}


def trial_layers(trial: optuna.trial.FrozenTrial) -> list[dict]:
    """A COMPLETE trial's per-layer statistics, averaged over its seeds, under today's names."""
    return [read_layer(layer) for layer in summary_of(trial)["layers"]]


def summarise(records: dict[int, dict], threshold: float) -> dict:
    """Across seeds: the numbers a trial is judged by. records: seed -> seed_record.

    Whether a seed trains is reported as k of n with its exact interval (`trained`, `n_seeds`,
    `trained_ci95`); the accuracy of the seeds that trained apart from it (`trained_acc_mean`, and
    its t-interval `trained_acc_ci95` from two such seeds on). A mean over trained and diverged
    seeds together (`mean_val_acc`, the objective) has no interval: it mixes two outcomes."""
    accs = [r["val_acc"] for r in records.values()]
    trained = [a for a in accs if is_trained(a, threshold)]
    n_layers = len(next(iter(records.values()))["layers"])
    layers = []
    for index in range(n_layers):
        per_seed = [read_layer(r["layers"][index]) for r in records.values()]
        layers.append({key: statistics.fmean(layer[key] for layer in per_seed) for key in LAYER_KEYS})
    return {
        "mean_val_acc": statistics.fmean(accs),
        "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "worst_acc": min(accs),
        "best_acc": max(accs),
        "frac_trained": len(trained) / len(accs),
        "trained": len(trained),
        "n_seeds": len(accs),
        "trained_ci95": list(clopper_pearson(len(trained), len(accs))),
        "trained_acc_mean": statistics.fmean(trained) if trained else None,
        "trained_acc_ci95": list(t_interval(trained)) if len(trained) > 1 else None,
        "n_diverged": sum(r["diverged"] for r in records.values()),
        "mean_test_acc": statistics.fmean(r["test_acc"] for r in records.values()),
        "layers": layers,
        "seconds": round(sum(r["seconds"] for r in records.values()), 3),
    }


def trial_note(params: dict, records: dict[int, dict], summary: dict, threshold: float) -> str:
    """The Markdown note the dashboard shows beside a trial."""
    lines = [
        f"## {describe_setting(params)}",
        "",
        f"Mean validation accuracy **{summary['mean_val_acc']:.4f}** (std {summary['acc_std']:.4f} over "
        f"{len(records)} seeds), worst seed {summary['worst_acc']:.4f}; "
        f"**{summary['trained']} of {summary['n_seeds']} seeds trained** (val acc > {threshold}; exact 95% interval "
        f"{summary['trained_ci95'][0]:.2f} to {summary['trained_ci95'][1]:.2f})"
        + (f", verdict **{summary['verdict']}**" if "verdict" in summary else "") + ".",
        "",
        "| seed | val acc | test acc | diverged | last layer near-zero | dead units |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in records.items():
        last = read_layer(r["layers"][-1])
        diverged = f"at step {r['diverged_step']}" if r["diverged"] else "no"
        lines.append(f"| {seed} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {diverged} | "
                     f"{last['near_zero_frac']:.3f} | {last['dead_units']} of {last['units']} |")
    return "\n".join(lines)


@dataclass
class StoredSeed:
    record: dict
    trial_number: int
    artifacts: tuple[str | None, str | None] | None  # its history's and picture's artifact ids; None: neither


def stored_seed_results(study: optuna.Study, storage: optuna.storages.BaseStorage,
                        point: tuple) -> dict[int, StoredSeed]:
    """Seeds that FAIL trials of setting `point` finished before they stopped (the latest wins)."""
    stored, fixed = {}, fixed_values(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if point_of(trial, fixed) != point:
            continue
        ids = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(trial, storage=storage)}
        for seed, record in seed_records(trial).items():
            first_run = record.get("reused_from", trial.number)  # where the seed was really trained
            clean = {k: v for k, v in record.items() if k != "reused_from"}
            artifacts = ids.get(history_name(seed)), ids.get(picture_name(seed))
            stored[seed] = StoredSeed(clean, first_run, artifacts if any(artifacts) else None)
    return stored


def probes_by_setting(study: optuna.Study) -> dict[tuple, list[optuna.trial.FrozenTrial]]:
    """An edge search's COMPLETE probes (trials that hold a verdict), by `setting_key(setting)`."""
    fixed, found = fixed_values(study), {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if verdict_of(trial) is not None:
            found.setdefault(setting_key(setting_of(trial, fixed)), []).append(trial)
    return found


def probe_verdicts(study: optuna.Study) -> dict[tuple, list[tuple[float, str]]]:
    """Each setting's COMPLETE probes (`probes_by_setting`) as (lr, verdict) pairs."""
    return {key: [(trial.params["lr"], verdict_of(trial)) for trial in trials]
            for key, trials in probes_by_setting(study).items()}


def probe_outcomes(probes: list[optuna.trial.FrozenTrial], threshold: float) -> tuple[list[float], list[bool]]:
    """Every seed of a setting's probes as (its learning rate, whether it trained): what its curve is
    fitted to (`study.dose_response`)."""
    pairs = [(probe.params["lr"], is_trained(record["val_acc"], threshold))
             for probe in probes for record in seed_records(probe).values()]
    return [lr for lr, _ in pairs], [trained for _, trained in pairs]


def reused_record(stored: StoredSeed, picture_found: bool) -> dict:
    """The record of a seed taken over from a failed trial of the same setting: `reused_from` names
    the trial that trained it, `picture_missing` says its picture could not be read from the artifact
    store (drawn on a machine with another store, or removed); the seed counts either way."""
    record = {**stored.record, "reused_from": stored.trial_number}
    return record if picture_found else {**record, "picture_missing": True}
