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
from study.design import CATAPULT_FACTOR
from study.records import fixed_values, seed_records, setting_of
from study.reliability import clopper_pearson, holm

OUTCOMES = ("trained", "catapult", "diverged", "stalled")
TRAINED = ("trained", "catapult")  # the outcomes of a seed that trained
EXACT_WAYS = 200_000  # a rank test enumerates every assignment up to this many
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
    first `common_steps`, the steps every seed of the group was measured at, and before its loss first
    rose above CATAPULT_FACTOR times its first (`before_spike`: a diverged seed's last steps, where lambda_max
    blows up, would otherwise decide it by construction), unconverged values left out; the medians of the two groups and the two-sided Mann-Whitney p by permutation (every
    assignment where there are at most 9,999, else 9,999 seeded). outcomes: `outcome_frame`; steps: `step_frame`."""
    rows = []
    for setting, group in outcomes.groupby(list(axes.NAMES), sort=True):
        mine = steps[(steps[list(axes.NAMES)] == pd.Series(dict(zip(axes.NAMES, setting)))).all(axis=1)]
        common = int(mine.groupby("seed")["step"].count().reindex(group["seed"], fill_value=0).min())
        usable = before_spike(mine[mine["step"] < common])
        peaks = usable.groupby("seed")["ratio"].max()
        diverged = peaks[peaks.index.isin(group[group["outcome"] == "diverged"]["seed"])]
        trained = peaks[peaks.index.isin(group[group["outcome"].isin(TRAINED)]["seed"])]
        p = math.nan
        if len(diverged) and len(trained):
            ranks = stats.rankdata(np.concatenate([diverged, trained]))
            p = _rank_sum_test(ranks, len(diverged), 9_999, np.random.default_rng(0))
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


def before_spike(steps: pd.DataFrame, spike: float = CATAPULT_FACTOR) -> pd.DataFrame:
    """The measured steps of each seed (`step_frame` rows) before its loss first rose above `spike`
    times its step-0 loss, converged and finite: what comes after is the blow-up (or a catapult's
    spike), not what led to it."""
    ordered = steps.sort_values([*axes.NAMES, "seed", "step"])
    keys = [*axes.NAMES, "seed"]
    first = ordered.groupby(keys)["loss"].transform("first")
    spiked = (ordered["loss"] > spike * first).astype(int).groupby([ordered[k] for k in keys]).cummax()
    return ordered[(spiked == 0) & ordered["converged"].astype(bool) & ordered["ratio"].notna()]


def ratio_by_step(outcomes: pd.DataFrame, steps: pd.DataFrame, draws: int = 9_999, spike: float = CATAPULT_FACTOR) -> pd.DataFrame:
    """From which step on the runs that diverged had a higher ratio (within their setting and rate:
    higher lambda_max) than those that trained (trained or catapult): one row per step t, each run's
    peak ratio over its steps 0..t before its loss spiked (`before_spike`), compared within each
    stratum (setting and rate, every axis) that holds both kinds. Columns: step, strata, diverged
    and trained (runs), `auc` (the mean over strata of P(a diverged run's peak > a trained run's)),
    and `p`, two-sided, of the stratified rank-sum test: the sum over strata of auc - 1/2, the
    outcomes permuted among the seeds, one permutation of the seed numbers shared by every stratum
    (strata that reuse seeds share their initial weights and batches, so they are not independent;
    stalled runs are permuted with the rest and compared with none); `draws` seeded permutations;
    and `p_holm` over the steps (valid under any dependence among them)."""
    usable = before_spike(steps, spike)
    seed_ids = np.unique(outcomes["seed"])
    strata = []  # per stratum: seed numbers (sorted), labels (+1 diverged, -1 trained, 0 other), its steps
    for setting, group in outcomes.groupby(list(axes.NAMES), sort=True):
        labels = np.where(group["outcome"] == "diverged", 1, np.where(group["outcome"].isin(TRAINED), -1, 0))
        if (labels == 1).any() and (labels == -1).any():
            mine = usable[(usable[list(axes.NAMES)] == pd.Series(dict(zip(axes.NAMES, setting)))).all(axis=1)]
            order = np.argsort(group["seed"].to_numpy())
            strata.append((group["seed"].to_numpy()[order], labels[order], mine))
    rows, rng = [], np.random.default_rng(0)
    for step in range(int(usable["step"].max()) + 1 if strata else 0):
        keys = rng.random((draws, len(seed_ids)))  # a shared random order of the seeds, per draw
        observed = drawn = 0.0
        counts = np.zeros(2, dtype=int)
        for seeds, labels, mine in strata:
            peaks = mine[mine["step"] <= step].groupby("seed")["ratio"].max().reindex(seeds).to_numpy()
            wins = np.where(peaks[:, None] > peaks[None, :], 1.0, np.where(peaks[:, None] == peaks[None, :], 0.5, 0.0))
            permuted = labels[np.argsort(keys[:, np.searchsorted(seed_ids, seeds)], axis=1)]  # (draws, seeds)
            n_diverged, n_trained = int((labels == 1).sum()), int((labels == -1).sum())
            observed += (labels == 1) @ wins @ (labels == -1) / (n_diverged * n_trained) - 0.5
            drawn = drawn + np.einsum("di,ij,dj->d", permuted == 1, wins, permuted == -1) / (n_diverged * n_trained) - 0.5
            counts += (n_diverged, n_trained)
        p = (1 + int((np.abs(drawn) >= abs(observed) - 1e-12).sum())) / (draws + 1)
        rows.append({"step": step, "strata": len(strata), "diverged": int(counts[0]), "trained": int(counts[1]),
                     "auc": 0.5 + observed / len(strata), "p": p})
    frame = pd.DataFrame(rows, columns=["step", "strata", "diverged", "trained", "auc", "p"])
    frame["p_holm"] = holm(list(frame["p"])) if len(frame) else []
    return frame


def _rank_sum_test(ranks: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> float:
    """Two-sided p of Mann-Whitney's test by permutation: `ranks` of both groups' values among
    themselves, the first group's `k` first. Every way to choose the first group where there are at
    most EXACT_WAYS (exact), else `draws` seeded ones."""
    observed = _auc(ranks[:k], len(ranks) - k) - 0.5
    if math.comb(len(ranks), k) <= EXACT_WAYS:
        chosen = np.array(list(itertools.combinations(range(len(ranks)), k)))
        drawn = _auc(ranks[chosen], len(ranks) - k) - 0.5
        return float((np.abs(drawn) >= abs(observed) - 1e-12).mean())
    chosen = rng.random((draws, len(ranks))).argsort(axis=1)[:, :k]
    drawn = _auc(ranks[chosen], len(ranks) - k) - 0.5
    return (1 + int((np.abs(drawn) >= abs(observed) - 1e-12).sum())) / (draws + 1)


def _auc(first_ranks: np.ndarray, others: int) -> np.ndarray:
    """P(a value of the first group > one of the others) from the first group's ranks among both
    (ties counting one half): Mann-Whitney's U / (n1 n2). first_ranks: (..., n1)."""
    n1 = first_ranks.shape[-1]
    return (first_ranks.sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * others)
