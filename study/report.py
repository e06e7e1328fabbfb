"""A stored study as a report: the numbers per setting with their uncertainty, and sentences that
say only what those numbers support.

`write_report` reads the storage (never trains) and writes `report.md` with the study's
configuration and duration, its heatmaps, a table of the fast.ai lesson's settings present in it
(mean validation accuracy with a 95% t-interval over seeds, seed std, worst seed, seeds trained,
near-zero fraction and dead units of the last hidden layer), the top settings by mean and by worst
seed, and generated findings, each with its evidence.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
from scipy import stats as scipy_stats

from study.design import CONFIG_ATTR, SEARCHED, TRAIN_THRESHOLD, upgrade_stored_config
from study.plots import save_figures, study_figures
from study.results import is_lesson_setting, seed_frame, training_minutes, trials_frame, wall_time


def setting_table(study: optuna.Study) -> pd.DataFrame:
    """One row per setting (init_scale, leak, sub), seeds pooled over its COMPLETE trials.

    Columns: n_seeds, mean, ci_low, ci_high (95% t-interval of the mean, clipped to [0, 1]; NaN below
    2 seeds), std,
    worst, best, n_trained (val acc > the study's train_threshold), n_diverged, trained_mean (mean
    over the seeds that trained; NaN if none), near_zero_last, dead_units_last.
    """
    threshold = study_threshold(study)
    seeds, trials = seed_frame(study), trials_frame(study)
    rows = []
    for setting, group in seeds.groupby(list(SEARCHED)):
        accs = group["val_acc"]
        n = len(accs)
        mean, std = accs.mean(), accs.std(ddof=1) if n > 1 else float("nan")
        half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
        # Accuracy lies in [0, 1]; a seed-fragile setting (some seeds at chance, some trained) has a
        # wide t-interval that would cross those bounds, so the interval is clipped to them.
        same = trials[(trials[list(SEARCHED)] == list(setting)).all(axis=1)]
        rows.append({
            **dict(zip(SEARCHED, setting)), "n_seeds": n, "mean": mean, "ci_low": max(mean - half, 0.0),
            "ci_high": min(mean + half, 1.0), "std": std, "worst": accs.min(), "best": accs.max(),
            "n_trained": int((accs > threshold).sum()), "n_diverged": int(group["diverged"].sum()),
            "trained_mean": accs[accs > threshold].mean() if (accs > threshold).any() else float("nan"),
            "near_zero_last": same["near_zero_last"].mean(), "dead_units_last": same["dead_units_last"].mean(),
        })
    columns = [*SEARCHED, "n_seeds", "mean", "ci_low", "ci_high", "std", "worst", "best", "n_trained",
               "n_diverged", "trained_mean", "near_zero_last", "dead_units_last"]
    return pd.DataFrame(rows, columns=columns)


def study_threshold(study: optuna.Study) -> float:
    """The validation accuracy above which the study counts a seed as trained."""
    return study.user_attrs.get(CONFIG_ATTR, {}).get("train_threshold", TRAIN_THRESHOLD)


def most_reliable(table: pd.DataFrame) -> pd.DataFrame:
    """The settings for which every seed trained, best worst seed first (mean breaks ties)."""
    return table[table["n_trained"] == table["n_seeds"]].sort_values(["worst", "mean"], ascending=False)


def setting_name(row) -> str:
    """(leak, sub), with the init scale when it is not 1."""
    scale = "" if row["init_scale"] == 1 else f" x{row['init_scale']:g}"
    return f"({row['leak']:g}, {row['sub']:g}){scale}"


def lesson_rows(table: pd.DataFrame) -> pd.DataFrame:
    keep = [is_lesson_setting(leak, sub) for leak, sub in zip(table["leak"], table["sub"])]
    return table[keep]


def findings(table: pd.DataFrame, threshold: float) -> list[str]:
    """Plain sentences generated from the table, each carrying its evidence."""
    if table.empty:
        return ["The study has no COMPLETE trial yet."]
    sentences = []
    for row in lesson_rows(table).to_dict("records"):
        n, k = row["n_seeds"], row["n_trained"]
        if k == n:
            sentences.append(f"{setting_name(row)} trained for all {n} seeds: mean {row['mean']:.3f} "
                             f"{_interval(row)}, worst seed {row['worst']:.3f}.")
        elif k == 0:
            sentences.append(f"{setting_name(row)} collapses: none of {n} seeds trained (val acc > {threshold:g}); "
                             f"best seed {row['best']:.3f}" + (f", {row['n_diverged']} diverged" if row['n_diverged'] else "")
                             + ".")
        else:
            sentences.append(f"{setting_name(row)} is seed-fragile: {n - k} of {n} seeds failed to train "
                             f"(val acc <= {threshold:g}), {k} trained; worst seed {row['worst']:.3f}, "
                             f"best {row['best']:.3f}.")

    reliable = most_reliable(table)
    if not reliable.empty:
        top = reliable.to_dict("records")[0]
        sentences.append(f"Most reliable: {setting_name(top)}, every one of {top['n_seeds']} seeds trained and its worst "
                         f"seed reached {top['worst']:.3f} (mean {top['mean']:.3f} {_interval(top)}).")
    never = table[table["n_trained"] == 0]
    if len(never):
        sentences.append(f"{len(never)} of {len(table)} settings trained for no seed: "
                         + ", ".join(setting_name(r) for r in never.to_dict("records")) + ".")

    by_mean = table.sort_values("mean", ascending=False)
    if len(by_mean) >= 2:
        first, second = by_mean.to_dict("records")[:2]
        if math.isnan(first["ci_low"]) or math.isnan(second["ci_low"]):
            sentences.append(f"Best mean: {setting_name(first)} ({first['mean']:.3f}), then {setting_name(second)} "
                             f"({second['mean']:.3f}); with one seed each there is no interval to tell them apart.")
        elif first["ci_low"] <= second["ci_high"]:
            sentences.append(f"Best mean: {setting_name(first)} {first['mean']:.3f} {_interval(first)}, then {setting_name(second)} "
                             f"{second['mean']:.3f} {_interval(second)}: the intervals overlap, so "
                             f"{min(first['n_seeds'], second['n_seeds'])} seeds cannot tell these two apart.")
        else:
            sentences.append(f"Best mean: {setting_name(first)} {first['mean']:.3f} {_interval(first)}, ahead of "
                             f"{setting_name(second)} {second['mean']:.3f} {_interval(second)}: the intervals do not overlap.")

    top_mean = list(by_mean.head(5).index)
    by_worst = list(table.sort_values(["worst", "mean"], ascending=False).index)
    moved = [(table.loc[i].to_dict(), top_mean.index(i) + 1, by_worst.index(i) + 1) for i in top_mean
             if by_worst.index(i) != top_mean.index(i)]
    if moved:
        sentences.append("Ranking by worst seed instead of mean changes the order: "
                         + "; ".join(f"{setting_name(r)} is #{a} by mean, #{b} by worst seed" for r, a, b in moved) + ".")
    if table["n_seeds"].max() < 5:
        sentences.append(f"Only {table['n_seeds'].max()} seeds per setting: the intervals are wide; "
                         "run more seeds (--seeds) before reading small differences.")
    return sentences


def write_report(study: optuna.Study, out_dir: Path) -> Path:
    """report.md and the pictures it embeds, in out_dir. Returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = save_figures(study_figures(study), out_dir)
    table = setting_table(study)
    config = upgrade_stored_config(study.user_attrs.get(CONFIG_ATTR, {}))
    threshold = study_threshold(study)
    lines = [f"# Study {study.study_name!r}", "", _duration(study), "", "## Configuration", "",
             "| | |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in config.items()]
    lines += ["", "## Findings", ""] + [f"- {s}" for s in findings(table, threshold)]
    lesson = lesson_rows(table)
    if not lesson.empty:
        lines += ["", "## The lesson's settings", "", markdown_table(lesson)]
    lines += ["", "## Top settings by mean accuracy", "", markdown_table(table.sort_values("mean", ascending=False).head(8)),
              "", "## Top settings by worst seed", "",
              markdown_table(table.sort_values(["worst", "mean"], ascending=False).head(8)), "", "## Heatmaps", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _interval(row) -> str:
    if math.isnan(row["ci_low"]):
        return "(one seed: no interval)"
    return f"[95% CI {row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _duration(study: optuna.Study) -> str:
    span = wall_time(study)
    if span is None:
        return "No trial has finished."
    start, minutes = span
    return (f"{len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))} COMPLETE trials, "
            f"from {start:%Y-%m-%d %H:%M} for {minutes:.1f} min "
            f"of wall time ({training_minutes(study):.1f} min of it training).")


def markdown_table(table: pd.DataFrame) -> str:
    columns = ["setting", "seeds", "mean [95% CI]", "seed std", "worst", "trained", "diverged",
               "near-zero (last)", "dead units (last)"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table.to_dict("records"):
        ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        std = "" if math.isnan(r["std"]) else f"{r['std']:.3f}"
        rows.append(f"| {setting_name(r)} | {r['n_seeds']} | {r['mean']:.3f}{ci} | {std} | {r['worst']:.3f} | "
                    f"{r['n_trained']} of {r['n_seeds']} | {r['n_diverged']} | {r['near_zero_last']:.3f} | "
                    f"{r['dead_units_last']:.1f} |")
    return "\n".join(rows)
