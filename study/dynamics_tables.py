"""A dynamics study's tables (`study.experiments.dynamics` measures and stores them): each seed's
measured steps, each seed's outcome, and the outcomes per setting and rate with their tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from scipy import stats

from study import axes
from study.records import fixed_values, seed_records, setting_of
from study.reliability import clopper_pearson, holm

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
    assignment where there are at most 9,999, else 9,999 seeded). outcomes: `outcome_frame`; steps: `step_frame`."""
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
            ranks = stats.rankdata(np.concatenate([diverged, trained]))
            p = _rank_sum_test([(ranks, len(diverged))], 9_999, np.random.default_rng(0))[1]
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


def ratio_by_step(outcomes: pd.DataFrame, steps: pd.DataFrame, draws: int = 9_999) -> pd.DataFrame:
    """From which step on the seeds that diverged are told apart from those that trained (trained or
    catapult) by how far they had gone beyond the bound: one row per step t, each seed's peak ratio
    over steps 0..t (converged values), compared within each stratum (setting and rate, every axis)
    whose seeds were all measured through t and which holds both groups. Columns: step, strata,
    diverged and trained (seeds), their medians, `auc` (the mean over strata of P(a diverged seed's
    peak > a trained seed's)) and `p`, two-sided, of the stratified rank-sum test (the sum over
    strata of auc - 1/2, outcomes permuted within strata, `draws` seeded permutations), and `p_holm`
    over the steps. Outcomes and steps as for `outcome_summary`; a seed stopped before t (diverged
    early) ends its stratum at t."""
    keys = list(axes.NAMES)
    strata = []  # per stratum: (diverged seeds, trained seeds, that stratum's steps, measured through)
    for setting, group in outcomes.groupby(keys, sort=True):
        mine = steps[(steps[keys] == pd.Series(dict(zip(keys, setting)))).all(axis=1)]
        through = int(mine.groupby("seed")["step"].count().reindex(group["seed"], fill_value=0).min())
        diverged = set(group[group["outcome"] == "diverged"]["seed"])
        trained = set(group[group["outcome"].isin(("trained", "catapult"))]["seed"])
        usable = mine[mine["converged"].astype(bool) & mine["ratio"].notna()]
        if diverged and trained:
            strata.append((diverged, trained, usable, through))
    rows, rng = [], np.random.default_rng(0)
    for step in range(max((through for *_, through in strata), default=0)):
        parts = []  # (ranks of the stratum's peaks, how many diverged); diverged seeds first
        medians = {"diverged": [], "trained": []}
        for diverged, trained, usable, through in strata:
            if step >= through:
                continue
            peaks = usable[usable["step"] <= step].groupby("seed")["ratio"].max()
            first, second = peaks[peaks.index.isin(diverged)], peaks[peaks.index.isin(trained)]
            if len(first) and len(second):
                parts.append((stats.rankdata(np.concatenate([first, second])), len(first)))
                medians["diverged"] += list(first)
                medians["trained"] += list(second)
        if not parts:
            continue
        auc, p = _rank_sum_test(parts, draws, rng)
        rows.append({"step": step, "strata": len(parts), "diverged": len(medians["diverged"]),
                     "trained": len(medians["trained"]), "median_diverged": float(np.median(medians["diverged"])),
                     "median_trained": float(np.median(medians["trained"])),
                     "auc": auc, "p": p})
    frame = pd.DataFrame(rows, columns=["step", "strata", "diverged", "trained", "median_diverged", "median_trained",
                                        "auc", "p"])
    frame["p_holm"] = holm(list(frame["p"])) if len(frame) else []
    return frame


def _rank_sum_test(parts: list[tuple[np.ndarray, int]], draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """The mean AUC over strata and the two-sided p of the stratified rank-sum test: the sum over
    strata of AUC - 1/2, the groups permuted within each stratum. parts: per stratum, the ranks of
    its values among its own (the first group's first) and the first group's size. One stratum with
    at most `draws` ways to choose the first group: every way (exact); otherwise `draws` seeded ones."""
    observed = sum(_auc(ranks[:k], len(ranks) - k) for ranks, k in parts) - len(parts) / 2
    ways = math.comb(len(parts[0][0]), parts[0][1]) if len(parts) == 1 else math.inf
    if ways <= draws:
        ranks, k = parts[0]
        chosen = np.array(list(itertools.combinations(range(len(ranks)), k)))
        drawn = _auc(ranks[chosen], len(ranks) - k) - 0.5
        p = float((np.abs(drawn) >= abs(observed) - 1e-12).mean())
    else:
        drawn = np.zeros(draws)
        for ranks, k in parts:
            chosen = rng.random((draws, len(ranks))).argsort(axis=1)[:, :k]
            drawn += _auc(ranks[chosen], len(ranks) - k) - 0.5
        p = (1 + int((np.abs(drawn) >= abs(observed) - 1e-12).sum())) / (draws + 1)
    return 0.5 + observed / len(parts), p


def _auc(first_ranks: np.ndarray, others: int) -> np.ndarray:
    """P(a value of the first group > one of the others) from the first group's ranks among both
    (ties counting one half): Mann-Whitney's U / (n1 n2). first_ranks: (..., n1)."""
    n1 = first_ranks.shape[-1]
    return (first_ranks.sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * others)
