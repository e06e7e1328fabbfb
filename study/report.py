"""A stored study as a report: the numbers per setting with the uncertainty that fits them, and
sentences that say only what a test supports.

Whether a seed trains is a yes/no outcome, so a setting's reliability is k of n seeds with its exact
(Clopper-Pearson) interval; the accuracy of the seeds that trained is reported apart, with its
t-interval. A mean over trained and diverged seeds together is the study's objective, never given an
interval. Settings are compared with the one that trained for the largest share of seeds: McNemar's
exact test on the seeds they share (the same seed gives both settings the same draws and data
order), Fisher's exact test where they share none, with Holm's correction over the comparisons the
report makes. "Less reliable" is written only where the corrected p is below 5%; otherwise the
report says the seeds cannot tell the settings apart and how many would give 80% power.

`write_report` reads the storage (never trains) and writes `report.md` with the study's
configuration and duration, findings, the lesson's settings, the comparisons and the pictures.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
from scipy import stats as scipy_stats

from study.axes import NAMES as AXIS_NAMES
from study.config import TrainConfig
from study.plots import save_figures, study_figures
from study.reliability import (ALPHA, clopper_pearson, discordant, fisher_exact, holm, mcnemar_exact, seeds_for_power,
                               t_interval)
from study.records import is_trained, stored_config, study_threshold
from study.results import is_lesson_setting, seed_frame, training_minutes, trials_frame, wall_time



def setting_table(study: optuna.Study) -> pd.DataFrame:
    """One row per setting (every searched axis), seeds pooled over its COMPLETE trials.

    Columns: n_seeds, n_trained (val acc > the study's train_threshold), trained_low, trained_high
    (exact 95% interval of the fraction trained), trained_mean with trained_acc_low, trained_acc_high
    (the accuracy of the seeds that trained and its 95% t-interval; NaN below one and two such seeds),
    mean (over every seed: the objective, no interval), worst, best, n_diverged, diverged_step_median,
    near_zero_last, dead_units_last.
    """
    threshold = study_threshold(study)
    seeds, trials = seed_frame(study), trials_frame(study)
    rows = []
    for setting, group in seeds.groupby(list(AXIS_NAMES)):
        accs = group["val_acc"]
        trained = accs[is_trained(accs, threshold)]
        low, high = clopper_pearson(len(trained), len(accs))
        acc_low, acc_high = t_interval(list(trained)) if len(trained) > 1 else (math.nan, math.nan)
        same = trials[(trials[list(AXIS_NAMES)] == list(setting)).all(axis=1)]
        rows.append({
            **dict(zip(AXIS_NAMES, setting)), "n_seeds": len(accs), "n_trained": len(trained),
            "trained_low": low, "trained_high": high,
            "trained_mean": trained.mean() if len(trained) else math.nan,
            "trained_acc_low": acc_low, "trained_acc_high": acc_high,
            "mean": accs.mean(), "worst": accs.min(), "best": accs.max(),
            "n_diverged": int(group["diverged"].sum()),
            "diverged_step_median": group["diverged_step"].median(),
            "near_zero_last": same["near_zero_last"].mean(), "dead_units_last": same["dead_units_last"].mean(),
        })
    columns = [*AXIS_NAMES, "n_seeds", "n_trained", "trained_low", "trained_high", "trained_mean", "trained_acc_low",
               "trained_acc_high", "mean", "worst", "best", "n_diverged", "diverged_step_median", "near_zero_last",
               "dead_units_last"]
    return pd.DataFrame(rows, columns=columns)


def most_reliable(table: pd.DataFrame) -> dict:
    """The setting that trained for the largest share of its seeds (more seeds, then the accuracy of
    its trained seeds, break ties): what the others are compared with."""
    ranked = table.assign(share=table["n_trained"] / table["n_seeds"])
    return ranked.sort_values(["share", "n_seeds", "trained_mean"], ascending=False).to_dict("records")[0]


def comparisons(table: pd.DataFrame, seeds: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Every other setting against `most_reliable`: one row each with k/n of both, the test and its
    p-value, Holm's adjusted p over all rows, the verdict, and the seeds per setting that would give
    Fisher's test 80% power at the observed fractions (NaN when none or more than 200 would).

    seeds: `results.seed_frame` of the same study (for the pairing by seed)."""
    columns = ["setting", "k", "n", "best", "k_best", "n_best", "test", "p", "p_holm", "verdict", "seeds_for_power"]
    if len(table) < 2:
        return pd.DataFrame(columns=columns)
    best, axes = most_reliable(table), varying(table)
    outcomes = {key: dict(zip(group["seed"], is_trained(group["val_acc"], threshold)))
                for key, group in seeds.groupby(list(AXIS_NAMES))}
    best_outcomes = outcomes[tuple(best[a] for a in AXIS_NAMES)]
    rows = []
    for row in table.to_dict("records"):
        if all(row[a] == best[a] for a in AXIS_NAMES):
            continue
        shared, only_best, only_mine = discordant(best_outcomes, outcomes[tuple(row[a] for a in AXIS_NAMES)])
        if shared:
            p, test = mcnemar_exact(only_best, only_mine), f"McNemar exact, {shared} shared seeds"
        else:
            p, test = fisher_exact(row["n_trained"], row["n_seeds"], best["n_trained"], best["n_seeds"]), "Fisher exact"
        power = seeds_for_power(row["n_trained"] / row["n_seeds"], best["n_trained"] / best["n_seeds"])
        rows.append({"setting": setting_name(row, axes), "k": row["n_trained"], "n": row["n_seeds"],
                     "best": setting_name(best, axes), "k_best": best["n_trained"], "n_best": best["n_seeds"],
                     "test": test, "p": p, "seeds_for_power": math.nan if power is None else power})
    frame = pd.DataFrame(rows)
    frame["p_holm"] = holm(list(frame["p"]))
    frame["verdict"] = ["less reliable" if p < ALPHA else "cannot be told apart" for p in frame["p_holm"]]
    return frame[columns]


def setting_name(row, axes: tuple[str, ...] = ()) -> str:
    """(leak, sub), with the init scale when it is not 1 and the values of `axes` (`varying`)."""
    extra = "" if row["init_scale"] == 1 else f" x{row['init_scale']:g}"
    extra += "".join(f" {axis} {row[axis]:g}" for axis in axes)
    return f"({row['leak']:g}, {row['sub']:g}){extra}"


def varying(table: pd.DataFrame) -> tuple[str, ...]:
    """The axes besides init_scale, leak and sub (lr, momentum, warm-up, ...) that take several values in
    the study: named in settings' names."""
    return tuple(axis for axis in AXIS_NAMES if axis not in ("init_scale", "leak", "sub") and table[axis].nunique() > 1)


def lesson_rows(table: pd.DataFrame) -> pd.DataFrame:
    keep = [is_lesson_setting(leak, sub) for leak, sub in zip(table["leak"], table["sub"])]
    return table[keep]


def findings(table: pd.DataFrame, seeds: pd.DataFrame, threshold: float) -> list[str]:
    """Plain sentences generated from the table, each carrying its evidence and, when it compares
    settings, its test."""
    if table.empty:
        return ["The study has no COMPLETE trial yet."]
    axes = varying(table)
    sentences = [_setting_sentence(row, threshold, axes) for row in lesson_rows(table).to_dict("records")]
    compared = comparisons(table, seeds, threshold)
    if len(compared):
        best = most_reliable(table)
        worse = compared[compared["verdict"] == "less reliable"]
        apart = compared[compared["verdict"] != "less reliable"]
        sentences.append(f"Most reliable: {setting_name(best, axes)}, {best['n_trained']} of {best['n_seeds']} seeds "
                         f"trained. Each other setting was compared with it ({len(compared)} tests, Holm-corrected "
                         f"at {ALPHA:g}).")
        if len(worse):
            sentences.append("Less reliable than it: " + "; ".join(
                f"{r['setting']} ({r['k']}/{r['n']}, {_test_text(r)})" for r in worse.to_dict("records")) + ".")
        if len(apart):
            sentences.append("Cannot be told apart from it with these seeds: " + "; ".join(
                f"{r['setting']} ({r['k']}/{r['n']}, {_test_text(r)}{_power_text(r)})"
                for r in apart.to_dict("records")) + ".")
    sentences += _accuracy_sentences(table, seeds, threshold, axes) + _failure_sentences(table, seeds, threshold, axes)
    return sentences


def _setting_sentence(row: dict, threshold: float, axes: tuple[str, ...]) -> str:
    k, n = row["n_trained"], row["n_seeds"]
    text = (f"{setting_name(row, axes)}: {k} of {n} seeds trained (val acc > {threshold:g}; exact 95% CI "
            f"{row['trained_low']:.2f}-{row['trained_high']:.2f})")
    if k:
        text += f"; its trained seeds reach {row['trained_mean']:.3f}" + (
            f" [95% CI {row['trained_acc_low']:.3f}, {row['trained_acc_high']:.3f}]" if k > 1 else " (one seed)")
    if row["n_diverged"]:
        text += f"; {row['n_diverged']} diverged (median step {row['diverged_step_median']:g})"
    return text + "."


def _test_text(row: dict) -> str:
    return f"{row['test']} p = {row['p']:.2g}, Holm {row['p_holm']:.2g}"


def _power_text(row: dict) -> str:
    if math.isnan(row["seeds_for_power"]):
        return ""
    return f"; about {row['seeds_for_power']:.0f} seeds per setting would give 80% power for this difference"


def _accuracy_sentences(table: pd.DataFrame, seeds: pd.DataFrame, threshold: float,
                        axes: tuple[str, ...]) -> list[str]:
    """The two settings whose trained seeds reach the highest accuracy, compared on the seeds that
    trained under both (paired t-test), else on all their trained seeds (Welch's)."""
    ranked = table[table["n_trained"] > 1].sort_values("trained_mean", ascending=False).to_dict("records")
    if len(ranked) < 2:
        return []
    first, second = ranked[:2]
    accs = [seeds[(seeds[list(AXIS_NAMES)] == [r[a] for a in AXIS_NAMES]).all(axis=1)].set_index("seed")["val_acc"]
            for r in (first, second)]
    trained = [a[is_trained(a, threshold)] for a in accs]
    both = sorted(set(trained[0].index) & set(trained[1].index))
    if len(both) > 1:
        p, test = scipy_stats.ttest_rel(trained[0][both], trained[1][both]).pvalue, f"paired t-test on {len(both)} seeds"
    else:
        p, test = scipy_stats.ttest_ind(trained[0], trained[1], equal_var=False).pvalue, "Welch's t-test"
    verdict = "higher" if p < ALPHA else "cannot be told apart"
    return [f"Highest accuracy of the trained seeds: {setting_name(first, axes)} {first['trained_mean']:.3f}, then "
            f"{setting_name(second, axes)} {second['trained_mean']:.3f} ({test}, p = {p:.2g}: {verdict})."]


def _failure_sentences(table: pd.DataFrame, seeds: pd.DataFrame, threshold: float,
                       axes: tuple[str, ...]) -> list[str]:
    """When the failed seeds failed: diverged early or late, or ended below the threshold."""
    failed = seeds[seeds["val_acc"] <= threshold]
    if failed.empty:
        return [f"Every seed of every setting trained (val acc > {threshold:g})."]
    diverged = failed[failed["diverged"]]
    text = f"{len(failed)} of {len(seeds)} seed runs failed to train"
    if len(diverged):
        steps = diverged["diverged_step"]
        text += (f"; {len(diverged)} of them diverged, at steps {steps.min():.0f} to {steps.max():.0f} "
                 f"(median {steps.median():g})")
    if len(failed) > len(diverged):
        text += f"; {len(failed) - len(diverged)} ended below the threshold without diverging"
    never = table[table["n_trained"] == 0]
    sentences = [text + "."]
    if len(never):
        sentences.append(f"{len(never)} of {len(table)} settings trained for no seed: "
                         + ", ".join(setting_name(r, axes) for r in never.to_dict("records")) + ".")
    return sentences


def write_report(study: optuna.Study, out_dir: Path) -> Path:
    """report.md and the pictures it embeds, in out_dir. Returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = save_figures(study_figures(study), out_dir)
    table, seeds = setting_table(study), seed_frame(study)
    config = stored_config(study)
    threshold = study_threshold(study)
    lines = [f"# Study {study.study_name!r}", "", _duration(study), "", "## Configuration", "",
             "| | |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in config.items()]
    if "train" in config:
        lines.append(f"| divergence | {divergence_text(config)} |")
    lines += ["", "## Findings", ""] + [f"- {s}" for s in findings(table, seeds, threshold)]
    lesson = lesson_rows(table)
    if not lesson.empty:
        lines += ["", "## The lesson's settings", "", markdown_table(lesson)]
    compared = comparisons(table, seeds, threshold)
    if len(compared):
        lines += ["", "## Each setting against the most reliable", "", comparison_table(compared)]
    lines += ["", "## Settings by share of seeds trained", "",
              markdown_table(table.assign(share=table["n_trained"] / table["n_seeds"])
                             .sort_values(["share", "trained_mean"], ascending=False)),
              "", "## Pictures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def divergence_text(config: dict) -> str:
    """The stored study's divergence rule in words, saying so when it is the absolute rule a study
    stored before 0.6.0 keeps. config: `records.stored_config`."""
    rule = TrainConfig(**config["train"]).divergence_rule()
    version = config["code_version"]  # every initstudy since 0.1.0 stores it
    if tuple(int(part) for part in version.split(".")[:2]) < (0, 6):
        rule += (f" (stored by initstudy {version}: before 0.6.0 the limit "
                 "was absolute, not relative to a run's first loss, and the study keeps it)")
    return rule


def _duration(study: optuna.Study) -> str:
    span = wall_time(study)
    if span is None:
        return "No trial has finished."
    start, minutes = span
    return (f"{len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))} COMPLETE trials, "
            f"from {start:%Y-%m-%d %H:%M} for {minutes:.1f} min "
            f"of wall time ({training_minutes(study):.1f} min of it training).")


def markdown_table(table: pd.DataFrame) -> str:
    columns = ["setting", "seeds trained", "exact 95% CI", "acc of trained seeds [95% CI]", "mean, all seeds",
               "worst", "diverged (median step)", "near-zero (last)", "dead units (last)"]
    rows, axes = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)], varying(table)
    for r in table.to_dict("records"):
        acc = "-" if r["n_trained"] == 0 else f"{r['trained_mean']:.3f}" + (
            "" if math.isnan(r["trained_acc_low"]) else f" [{r['trained_acc_low']:.3f}, {r['trained_acc_high']:.3f}]")
        diverged = f"{r['n_diverged']}" + (f" ({r['diverged_step_median']:g})" if r["n_diverged"] else "")
        rows.append(f"| {setting_name(r, axes)} | {r['n_trained']} of {r['n_seeds']} | {r['trained_low']:.2f}-"
                    f"{r['trained_high']:.2f} | {acc} | {r['mean']:.3f} | {r['worst']:.3f} | {diverged} | "
                    f"{r['near_zero_last']:.3f} | {r['dead_units_last']:.1f} |")
    return "\n".join(rows)


def comparison_table(compared: pd.DataFrame) -> str:
    rows = ["| setting | trained | most reliable | trained | test | p | Holm p | verdict | seeds for 80% power |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in compared.to_dict("records"):
        power = "-" if math.isnan(r["seeds_for_power"]) else f"{r['seeds_for_power']:.0f}"
        rows.append(f"| {r['setting']} | {r['k']}/{r['n']} | {r['best']} | {r['k_best']}/{r['n_best']} | {r['test']} | "
                    f"{r['p']:.2g} | {r['p_holm']:.2g} | {r['verdict']} | {power} |")
    return "\n".join(rows)
