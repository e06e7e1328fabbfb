"""A dynamics study's tables (`study.experiments.dynamics` measures and stores them): each seed's
measured steps, each seed's outcome, and the outcomes per setting and rate with their tests."""

from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.trial import TrialState
from scipy import stats

from study import axes
from study.records import fixed_values, seed_records, setting_of
from study.reliability import clopper_pearson

OUTCOMES = ("trained", "catapult", "diverged", "stalled")
STEP_COLUMNS = ("seed", "step", "loss", "lambda_max", "ratio", "grad_norm", "converged", "products")


def step_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per measured step of every seed of a dynamics study: the setting (every axis, lr
    included), then StepPoint's fields."""
    fixed, rows = fixed_values(study), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        setting = setting_of(trial, fixed)
        for record in seed_records(trial).values():
            rows += [{**setting, **point} for point in record["first_steps"]]
    return pd.DataFrame(rows, columns=[*axes.NAMES, *STEP_COLUMNS])


def outcome_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per seed of a dynamics study: the setting, seed, outcome, diverged_step, val_acc, the
    peak ratio over its measured steps and the step of that peak."""
    fixed, rows = fixed_values(study), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        setting = setting_of(trial, fixed)
        for seed, record in sorted(seed_records(trial).items()):
            ratios = [point["ratio"] for point in record["first_steps"]]
            peak = max(range(len(ratios)), key=ratios.__getitem__) if ratios else None
            rows.append({**setting, "seed": seed, "outcome": record["outcome"], "diverged_step": record["diverged_step"],
                         "val_acc": record["val_acc"], "peak_ratio": ratios[peak] if ratios else math.nan,
                         "peak_step": record["first_steps"][peak]["step"] if ratios else None})
    return pd.DataFrame(rows, columns=[*axes.NAMES, "seed", "outcome", "diverged_step", "val_acc", "peak_ratio",
                                       "peak_step"])


def outcome_summary(outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per setting and rate: n seeds; each outcome's k with its exact 95% interval ("2/8
    (0.03-0.65)"); the median peak ratio of the failed (diverged or stalled) and of the trained
    (trained or catapult) seeds, and the exact two-sided Mann-Whitney p of the two groups (NaN
    where either is empty). outcomes: `outcome_frame`."""
    rows = []
    for setting, group in outcomes.groupby(list(axes.NAMES), sort=True):
        failed = group[group["outcome"].isin(("diverged", "stalled"))]["peak_ratio"].dropna()
        trained = group[group["outcome"].isin(("trained", "catapult"))]["peak_ratio"].dropna()
        p = (stats.mannwhitneyu(failed, trained, method="exact").pvalue if len(failed) and len(trained)
             else math.nan)
        counts = {}
        for outcome in OUTCOMES:
            k = int((group["outcome"] == outcome).sum())
            low, high = clopper_pearson(k, len(group))
            counts[outcome] = f"{k}/{len(group)} ({low:.2f}-{high:.2f})"
        rows.append({**dict(zip(axes.NAMES, setting)), "n": len(group), **counts,
                     "peak_ratio_failed": failed.median(), "peak_ratio_trained": trained.median(),
                     "peak_ratio_p": float(p)})
    return pd.DataFrame(rows, columns=[*axes.NAMES, "n", *OUTCOMES, "peak_ratio_failed", "peak_ratio_trained",
                                       "peak_ratio_p"])
