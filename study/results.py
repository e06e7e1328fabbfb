"""A stored study as tables: what the heatmaps, the summary and the report read."""

from __future__ import annotations

import datetime
import math

import optuna
import pandas as pd
from optuna.trial import TrialState

from study import axes
from study.ladder import SETTING_AXES, EdgeDesign, rung_verdicts, setting_key
from study.dose_response import fit_curve
from study.edge_law import Law, fit_law, same_exponent_p
from study.records import (fixed_values, is_trained, probe_outcomes, probe_verdicts, probes_by_setting, seed_records,
                           setting_of, study_threshold, summary_of, trial_layers, verdict_of)


FIXED_SWEEP_SEEDS = 10  # the cost an edge search is measured against: every rung, ten seeds each
CURVE_COLUMNS = ["lr50", "lr50_low", "lr50_high", "lr90", "lr90_low", "lr90_high", "slope", "link"]
EDGE_COLUMNS = ["leak", "sub", *(axis for axis in SETTING_AXES if axis not in ("leak", "sub")), *CURVE_COLUMNS,
                "max_stable_lr", "first_unstable_lr", "trainings", "first_unstable_verdict", "probes", "done"]

# The axes an edge may follow as a law, and the base of each: lr90 proportional to base^exponent.
LAW_BASES = {"momentum": lambda momentum: 1.0 - momentum, "init_scale": lambda init_scale: init_scale}
LAW_COLUMNS = ["axis", *SETTING_AXES, *Law.__annotations__, "same_exponent_p"]

# The fast.ai lesson's GeneralRelu settings (leak, sub) and plain ReLU.
LESSON_SETTINGS = ((0.1, 0.4), (0.2, 0.4), (0.5, 0.7), (0.05, 0.9), (0.0, 0.0))


def is_lesson_setting(leak: float, sub: float) -> bool:
    return (round(leak, 4), round(sub, 4)) in LESSON_SETTINGS


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per COMPLETE trial: number, init_scale, leak, sub, mean_val_acc, acc_std, worst_acc,
    frac_trained, n_diverged, mean_test_acc, near_zero_last, dead_units_last, n_seeds, seconds."""
    rows, fixed = [], fixed_values(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = summary_of(trial)
        last = trial_layers(trial)[-1]
        rows.append({
            "number": trial.number,
            **setting_of(trial, fixed),
            **{key: attrs[key] for key in ("mean_val_acc", "acc_std", "worst_acc", "frac_trained",
                                           "n_diverged", "mean_test_acc", "seconds")},
            "near_zero_last": last["near_zero_frac"],
            "dead_units_last": last["dead_units"],
            "n_seeds": len(seed_records(trial)),
        })
    columns = ["number", *axes.NAMES, "mean_val_acc", "acc_std", "worst_acc", "frac_trained", "n_diverged",
               "mean_test_acc", "seconds", "near_zero_last", "dead_units_last", "n_seeds"]
    return pd.DataFrame(rows, columns=columns)


def seed_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per (COMPLETE trial, seed): number, the searched axes, seed, val_acc, trained (by the
    study's threshold, `records.is_trained`), test_acc, diverged, diverged_step (NaN where it did not
    diverge)."""
    rows, fixed, threshold = [], fixed_values(study), study_threshold(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for seed, record in seed_records(trial).items():
            rows.append({"number": trial.number, **setting_of(trial, fixed),
                         "seed": seed, "val_acc": record["val_acc"],
                         "trained": is_trained(record["val_acc"], threshold), "test_acc": record["test_acc"],
                         "diverged": record["diverged"], "diverged_step": record["diverged_step"]})
    return pd.DataFrame(rows, columns=["number", *axes.NAMES, "seed", "val_acc", "trained", "test_acc", "diverged",
                                       "diverged_step"])


def wall_time(study: optuna.Study) -> tuple[datetime.datetime, float] | None:
    """When the study's first finished trial started, and the minutes from then to the last finish;
    None before any trial finished."""
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not done:
        return None
    start = min(t.datetime_start for t in done)
    return start, (max(t.datetime_complete for t in done) - start).total_seconds() / 60


def training_minutes(study: optuna.Study) -> float:
    """Minutes spent training the seeds of finished trials (their summed `seconds`)."""
    return sum(summary_of(t).get("seconds", 0.0) for t in study.get_trials(deepcopy=False) if t.state.is_finished()) / 60


def summary_table(study: optuna.Study, top: int = 5) -> str:
    """The top settings by mean accuracy and by worst seed, as aligned text."""
    frame = trials_frame(study)
    if frame.empty:
        return "no COMPLETE trials yet"
    varying = [axis for axis in axes.NAMES if axis not in ("init_scale", "leak", "sub") and frame[axis].nunique() > 1]
    columns = ["init_scale", "leak", "sub", *varying, "mean_val_acc", "acc_std", "worst_acc", "frac_trained",
               "n_diverged"]
    blocks = [f"{len(frame)} COMPLETE trials in study {study.study_name!r}"]
    for key, label in (("mean_val_acc", "mean validation accuracy"), ("worst_acc", "worst seed")):
        best = frame.sort_values([key, "mean_val_acc"], ascending=False).head(top)[columns]
        blocks.append(f"\ntop {len(best)} by {label}:\n" + best.to_string(index=False, float_format="{:.3f}".format))
    return "\n".join(blocks)


def edge_table(study: optuna.Study, design: EdgeDesign) -> pd.DataFrame:
    """One row per setting: EDGE_COLUMNS. The curve's columns (lr50 and lr90 with their 95%
    profile-likelihood intervals, the slope per unit of log lr, the link) are fitted to every seed of
    the setting's probes (`study.dose_response`; NaN before any, and an interval end the data cannot
    bound). max_stable_lr and first_unstable_lr are the bisection's probed rungs (NaN where the ladder
    ended first, and for the adaptive method); trainings = seeds trained over the setting's probes."""
    from study.edge_search import next_rates  # the driver's choice of the next probe says what is done

    ladder, found, rows = design.ladder(), probes_by_setting(study), []
    threshold, rates = study_threshold(study), next_rates(study, design)
    bisect = design.method == "bisect"
    states = design.bisections(probe_verdicts(study)) if bisect else {}
    for setting in design.settings():
        done = found.get(setting_key(setting), [])
        row = {**setting, **curve_columns(*probe_outcomes(done, threshold)),
               "max_stable_lr": math.nan, "first_unstable_lr": math.nan, "first_unstable_verdict": "",
               "trainings": sum(len(seed_records(t)) for t in done), "probes": len(done),
               "done": rates[setting_key(setting)] is None}
        if bisect:
            verdicts = rung_verdicts(ladder, [(t.params["lr"], verdict_of(t)) for t in done])
            state = states[setting_key(setting)]
            row.update({"max_stable_lr": ladder[state.stable] if state.stable >= 0 else math.nan,
                        "first_unstable_lr": ladder[state.unstable] if state.unstable < len(ladder) else math.nan,
                        "first_unstable_verdict": verdicts.get(state.unstable, "")})
        rows.append(row)
    return pd.DataFrame(rows, columns=EDGE_COLUMNS)


def curve_columns(lrs: list[float], trained: list[bool]) -> dict:
    """CURVE_COLUMNS of the curve through these outcomes; NaN (and no link) without any."""
    if not lrs:
        return {**{column: math.nan for column in CURVE_COLUMNS}, "link": ""}
    curve = fit_curve(lrs, trained)
    return {column: getattr(curve, column) for column in CURVE_COLUMNS}


def seed_outcomes(study: optuna.Study) -> pd.DataFrame:
    """One row per seed of every COMPLETE probe of an edge search: its setting (SETTING_AXES), lr and
    whether it trained. Frames of several searches may be stacked before `law_table`."""
    threshold, rows = study_threshold(study), []
    for key, probes in probes_by_setting(study).items():
        for lr, trained in zip(*probe_outcomes(probes, threshold)):
            rows.append({**dict(zip(SETTING_AXES, key)), "lr": lr, "trained": trained})
    return pd.DataFrame(rows, columns=[*SETTING_AXES, "lr", "trained"])


def law_table(outcomes: pd.DataFrame, fit_draws: int | None = None) -> pd.DataFrame:
    """One row per law axis (LAW_BASES) and setting with two or more levels of it: the law fitted to
    every seed at every level (`study.edge_law.fit_law`; the axis's own column is empty), and
    `same_exponent_p` the test that all of the axis's settings share one exponent (NaN with one).
    outcomes: `seed_outcomes`; fit_draws: `fit_law`'s."""
    rows = []
    for axis, base in LAW_BASES.items():
        by = [name for name in SETTING_AXES if name != axis]
        groups = [group for _, group in outcomes.groupby(by)] if len(outcomes) else []
        groups = [group for group in groups if group[axis].nunique() >= 2]
        if not groups:
            continue
        data = [(group["lr"], group["trained"], group[axis].map(base)) for group in groups]
        same = same_exponent_p(data) if len(groups) > 1 else math.nan
        for group, (lrs, trained, bases) in zip(groups, data):
            law = fit_law(lrs, trained, bases, fit_draws=fit_draws)
            rows.append({"axis": axis, **group.iloc[0][by].to_dict(), **law.to_dict(),
                         "same_exponent_p": same})
    return pd.DataFrame(rows, columns=LAW_COLUMNS)


def probe_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per COMPLETE probe: the setting, lr, verdict, trained (k), n_seeds, trained_ci95 low
    and high, and the mean validation accuracy of the seeds that trained."""
    fixed, rows = fixed_values(study), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = summary_of(trial)
        if "verdict" not in attrs:
            continue
        low, high = attrs["trained_ci95"]
        rows.append({**setting_of(trial, fixed), "verdict": attrs["verdict"], "trained": attrs["trained"],
                     "n_seeds": attrs["n_seeds"], "ci_low": low, "ci_high": high,
                     "trained_acc_mean": attrs["trained_acc_mean"]})
    return pd.DataFrame(rows, columns=[*axes.NAMES, "verdict", "trained", "n_seeds", "ci_low", "ci_high",
                                       "trained_acc_mean"])


def cost_line(table: pd.DataFrame, design: EdgeDesign) -> str:
    """The trainings used against a fixed sweep of every rung with FIXED_SWEEP_SEEDS seeds (bisect), or
    against the budget, with how many settings reached the precision asked (adaptive)."""
    used = int(table["trainings"].sum())
    if design.method == "adaptive":
        precise = int((table["lr90_high"] / table["lr90_low"] <= design.precision).sum())
        return (f"{used} trainings for {len(table)} settings (at most {design.max_trainings} each); lr90's 95% "
                f"interval within x{design.precision:g} for {precise} of {len(table)}")
    fixed = len(table) * len(design.ladder()) * FIXED_SWEEP_SEEDS
    return (f"{used} trainings for {len(table)} settings, against {fixed} for a fixed {FIXED_SWEEP_SEEDS}-seed "
            f"sweep of the same {len(design.ladder())} rungs ({used / fixed:.0%})")
