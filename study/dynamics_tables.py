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
    peak ratio over its measured steps (converged values only) and the step of that peak."""
    fixed, rows = fixed_values(study), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        setting = setting_of(trial, fixed)
        for seed, record in sorted(seed_records(trial).items()):
            usable = [p for p in record["first_steps"] if p["converged"] and math.isfinite(p["ratio"])]
            peak = max(usable, key=lambda p: p["ratio"], default=None)
            rows.append({**setting, "seed": seed, "outcome": record["outcome"], "diverged_step": record["diverged_step"],
                         "val_acc": record["val_acc"], "peak_ratio": peak["ratio"] if peak else math.nan,
                         "peak_step": peak["step"] if peak else None})
    return pd.DataFrame(rows, columns=[*axes.NAMES, "seed", "outcome", "diverged_step", "val_acc", "peak_ratio",
                                       "peak_step"])


def outcome_summary(outcomes: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per setting and rate: n seeds; each outcome's k with its exact 95% interval ("2/8
    (0.03-0.65)"); and whether the seeds that diverged ran beyond the bound more than those that
    trained (trained or catapult; stalled seeds in neither): the peak ratio of each seed over the
    first `common_steps`, the steps every seed of the group was measured at (a diverged seed's last
    steps, where lambda_max blows up, would otherwise decide it by construction), unconverged values
    left out; the medians of the two groups and the two-sided Mann-Whitney p by permutation (every
    assignment where there are few, else 9,999 seeded). outcomes: `outcome_frame`; steps: `step_frame`."""
    rows = []
    for setting, group in outcomes.groupby(list(axes.NAMES), sort=True):
        mine = steps[(steps[list(axes.NAMES)] == pd.Series(dict(zip(axes.NAMES, setting)))).all(axis=1)]
        common = int(mine.groupby("seed")["step"].count().reindex(group["seed"], fill_value=0).min())
        usable = mine[(mine["step"] < common) & mine["converged"].astype(bool) & mine["ratio"].notna()]
        peaks = usable.groupby("seed")["ratio"].max()
        diverged = peaks[peaks.index.isin(group[group["outcome"] == "diverged"]["seed"])]
        trained = peaks[peaks.index.isin(group[group["outcome"].isin(("trained", "catapult"))]["seed"])]
        p = math.nan
        if len(diverged) and len(trained):
            p = float(stats.mannwhitneyu(diverged, trained, method=stats.PermutationMethod(n_resamples=9_999, rng=0))
                      .pvalue)
        counts = {}
        for outcome in OUTCOMES:
            k = int((group["outcome"] == outcome).sum())
            low, high = clopper_pearson(k, len(group))
            counts[outcome] = f"{k}/{len(group)} ({low:.2f}-{high:.2f})"
        rows.append({**dict(zip(axes.NAMES, setting)), "n": len(group), **counts, "common_steps": common,
                     "peak_ratio_diverged": diverged.median(), "peak_ratio_trained": trained.median(),
                     "peak_ratio_p": p})
    return pd.DataFrame(rows, columns=[*axes.NAMES, "n", *OUTCOMES, "common_steps", "peak_ratio_diverged",
                                       "peak_ratio_trained", "peak_ratio_p"])
