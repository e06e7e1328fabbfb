"""Section 7 of the findings: what the first steps do. Whether a learning-rate warm-up moves the edge
(lr90 at warm-up 0, 5 and 20 steps; `edge_law.same_curve_p`), the outcome mix of each setting's seeds
at its lr90 and lr50 with and without warm-up, whether the seeds that diverge had gone further beyond
the quadratic bound in their first steps (`dynamics_tables.ratio_by_step`), and the lesson's (.2, .4)
failures seed by seed."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure

from study.dynamics_plots import dynamics_figure
from study.dynamics_tables import outcome_frame, outcome_summary, ratio_by_step, step_frame
from study.edge_law import same_curve_p
from study.experiments.findings import claims
from study.experiments.findings.edges import interval
from study.experiments.findings.plan import LESSON_FAILS, LESSON_LR, LESSON_MOMENTUM, FindingsPlan
from study.experiments.findings.tables import lesson_outcome, markdown_table, setting_name, verdict_table
from study.reliability import ALPHA, holm
from study.results import seed_outcomes, wall_time


def _frames(dynamics: dict[str, optuna.Study]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every dynamics study's seeds (`outcome_frame`) and measured steps (`step_frame`), stacked: the
    plan's studies never share a setting, rate and warm-up, so each cell is one study's."""
    return (pd.concat([outcome_frame(study) for study in dynamics.values()], ignore_index=True),
            pd.concat([step_frame(study) for study in dynamics.values()], ignore_index=True))


def first_steps_figures(dynamics: dict[str, optuna.Study], rates: dict) -> dict[str, Figure]:
    """The first steps at each setting's lr50, without and with warm-up; and (.2, .4) at the lesson's
    lr. dynamics: the plan's dynamics studies by name; rates: the plan's `dynamics_rates`."""
    outcomes, steps = _frames(dynamics)
    at_lr50 = outcomes[[lr == rates[(leak, sub)]["lr50"] for leak, sub, lr in
                        zip(outcomes["leak"], outcomes["sub"], outcomes["lr"])]]
    lesson = outcomes[_is_lesson_cell(outcomes)]
    keys = ["leak", "sub", "lr", "warmup_steps", "seed"]
    figures = {"first_steps": dynamics_figure(steps.merge(at_lr50[keys]), at_lr50)}
    if len(lesson):
        figures["first_steps_lesson"] = dynamics_figure(steps.merge(lesson[keys]), lesson)
    return figures


def first_steps_section(plan: FindingsPlan, edges: dict, grid_study: optuna.Study, grid: pd.DataFrame,
                        dynamics: dict[str, optuna.Study], lesson: dict, pictures: list) -> str:
    """edges: name -> (design, study, edge_table) of every edge search of the plan; grid: the grid's
    `edge_table`; dynamics: the plan's dynamics studies by name; lesson: the lesson studies'
    `claims.Outcomes` by name."""
    rates, (outcomes, steps) = plan.dynamics_rates(grid), _frames(dynamics)
    warmup_edges = [edges[_warmup_name(setting)] for setting in plan.warmup_settings]
    minutes = sum(minutes for _, minutes in filter(None, map(wall_time, [*dynamics.values(),
                                                                         *(study for _, study, _ in warmup_edges)])))
    return "\n".join([
        "## 7. What the first steps do",
        "",
        f"Each seed below was trained as in the other sections and measured along its first "
        f"{plan.dynamics_steps} optimiser steps (`python -m study dynamics`; README, *Why a seed fails*): on each "
        "step's own batch, before the step, lambda_max of the loss's Hessian and the ratio lr x lambda_max / "
        "(2 (1 + mu)) with that step's rate (above 1 the step is beyond heavy-ball SGD's stability bound on a "
        "quadratic of that curvature). Each seed is then *trained*, *catapult* (trained after its loss rose above "
        "2x its first loss), *diverged* (with its step) or *stalled*. The seeds are the lesson studies' (0 to "
        f"{plan.seeds - 1}), so every comparison below is paired on them. By construction, not findings: with "
        "warm-up a step's rate, hence its ratio, is (i + 1) / K of the full one for the first K steps; the probe "
        "only reads, so a seed's outcome is the one it has without being measured. Cost: "
        f"{int(sum(table['trainings'].sum() for _, _, table in warmup_edges))} trainings for the warm-up edges and "
        f"{len(outcomes)} measured seeds, {minutes:.0f} min of the studies' wall time (machine and date: the header).",
        "",
        _warmup_part(plan, edges, grid_study, grid),
        "",
        _mix_part(plan, outcomes, steps, rates),
        "",
        _ratio_part(outcomes, steps),
        "",
        _lesson_part(plan, outcomes, steps, lesson),
        "",
        *[f"![{p.stem}](findings/{p.name})" for p in pictures if p.stem.startswith("first_steps")],
    ])


# -- parts -------------------------------------------------------------------------------------------


def _warmup_part(plan: FindingsPlan, edges: dict, grid_study: optuna.Study, grid: pd.DataFrame) -> str:
    warmups = (0, *plan.warmups)
    seeds = seed_outcomes(grid_study)
    seeds = pd.concat([seeds[seeds["warmup_steps"] == 0]] + [seed_outcomes(edges[_warmup_name(s)][1])
                                                             for s in plan.warmup_settings], ignore_index=True)
    rows, p_values = [], []
    for leak, sub in plan.warmup_settings:
        mine = seeds[(seeds["leak"] == leak) & (seeds["sub"] == sub)]
        p_values.append(same_curve_p(mine["lr"], mine["trained"], mine["warmup_steps"]))
        table = pd.concat([grid, edges[_warmup_name((leak, sub))][2]])
        table = table[(table["leak"] == leak) & (table["sub"] == sub)]
        rows.append({"setting": setting_name(dict(leak=leak, sub=sub)),
                     **{f"lr90, warm-up {w}": interval(table[table["warmup_steps"] == w].iloc[0]) for w in warmups},
                     "trainings": int(table["trainings"].sum()),
                     "lr90s": [float(table[table["warmup_steps"] == w]["lr90"].iloc[0]) for w in warmups]})
    shown = pd.DataFrame(rows).drop(columns="lr90s")
    shown["one curve, p (Holm)"] = [f"{p:.2g} ({h:.2g})" for p, h in zip(p_values, holm(p_values))]
    across = []
    for w in warmups:
        mine = seeds[(seeds["warmup_steps"] == w).to_numpy()
                     & np.array([(leak, sub) in plan.warmup_settings for leak, sub in zip(seeds["leak"], seeds["sub"])])]
        across.append(same_curve_p(mine["lr"], mine["trained"], [f"{leak:g}, {sub:g}" for leak, sub in zip(mine["leak"], mine["sub"])]))
    moved = [f"{row['setting']} (Holm p < {ALPHA:g}; lr90 " + " / ".join(f"{lr90:.3g}" for lr90 in row["lr90s"])
             + f" at warm-up {' / '.join(map(str, warmups))}: "
             + ("in one direction with the warm-up's length)" if _monotone(row["lr90s"]) else
                "not in one direction with the warm-up's length, so a difference among the levels, not a trend)")
             for row, h in zip(rows, holm(p_values)) if h < ALPHA]
    apart = [f"{w} steps, {'rejected' if h < ALPHA else 'not rejected'} (p = {p:.2g}, Holm {h:.2g})"
             for w, p, h in zip(warmups, across, holm(across))]
    names = ", ".join(setting_name(dict(leak=leak, sub=sub)) for leak, sub in plan.warmup_settings)
    return "\n".join([
        f"### Warm-up and the edge (momentum {LESSON_MOMENTUM:g})",
        "",
        f"The edge of {names} again with the rate rising linearly over the first {' or '.join(map(str, plan.warmups))} "
        "steps (`python -m study edge --warmup-steps`), fitted as in section 1; warm-up 0 is the grid's own search "
        "(the same seeds at the same rates). *One curve*: whether every warm-up shares one curve against one "
        "location per warm-up with a shared slope (`same_curve_p`, parametric bootstrap; no power against a change "
        "of slope alone, so not rejecting it is not \"the same curve\"), Holm over the settings.",
        "",
        markdown_table(shown),
        "",
        ("Warm-up moved the curve of " + "; ".join(moved) + "." if moved else
         "For no setting does warm-up move the curve by more than these seeds can tell apart (Holm p >= 0.05 for "
         "each)."),
        "",
        f"Whether the settings share one curve at each warm-up (the same test, the levels the settings, Holm over "
        f"the warm-ups): {'; '.join(apart)}. Where it is rejected the settings' edges differ at that warm-up; "
        "where not, they cannot be told apart there with these seeds.",
    ])


def _mix_part(plan: FindingsPlan, outcomes: pd.DataFrame, steps: pd.DataFrame, rates: dict) -> str:
    cells = _cells(outcomes, rates)
    summary = outcome_summary(outcomes, steps).merge(cells[["leak", "sub", "lr", "warmup_steps", "at"]].drop_duplicates())
    diverged_at = (outcomes[outcomes["outcome"] == "diverged"].groupby(["leak", "sub", "lr", "warmup_steps"])
                   ["diverged_step"].agg(lambda s: f"{int(s.min())}-{int(s.max())}"))
    shown = pd.DataFrame([{
        "setting": setting_name(r), "lr": f"{r['lr']:g} ({r['at']})", "warm-up": int(r["warmup_steps"]),
        "trained": r["trained"], "catapult": r["catapult"], "diverged": r["diverged"],
        "diverged at steps": diverged_at.get((r["leak"], r["sub"], r["lr"], r["warmup_steps"]), "-"),
        "stalled": r["stalled"],
        "peak ratio, diverged / trained": f"{_number(r['peak_ratio_diverged'])} / {_number(r['peak_ratio_trained'])}",
        "over steps": f"0-{r['common_steps'] - 1}",
        "Mann-Whitney p": r["peak_ratio_p"]} for r in summary.to_dict("records")])
    verdicts = []
    for (leak, sub), setting_rates in rates.items():
        lr = setting_rates["lr50"]
        cold, warm = (_seeds_of(outcomes, leak, sub, lr, w, f"{setting_name(dict(leak=leak, sub=sub))} warm-up {w}")
                      for w in (0, max(plan.warmups)))
        verdicts.append(claims.more_reliable(
            f"{setting_name(dict(leak=leak, sub=sub))} at its lr50 {lr:g}: {max(plan.warmups)} warm-up steps train "
            "more seeds than none", warm, cold))
    verdicts = claims.with_holm(verdicts)
    return "\n".join([
        "### How the seeds fail at the edge",
        "",
        f"{plan.seeds} seeds per row: each setting at its lr90 and lr50 (section 1's fit, two digits), and at its lr50 "
        f"after {max(plan.warmups)} warm-up steps. Each outcome is k/n with its exact 95% interval. The peak ratio is "
        "each seed's largest over the steps every seed of its row was measured at (a diverged seed's last steps, "
        "where lambda_max blows up, would otherwise decide it by construction; the window still holds the last step "
        "of the row's first seed to diverge), the median of the seeds that "
        "diverged against those that trained (catapults with them), two-sided Mann-Whitney by permutation per row, "
        "uncorrected and descriptive (the next table pools the rows).",
        "",
        markdown_table(shown),
        "",
        verdict_table(verdicts),
    ])


def _ratio_part(outcomes: pd.DataFrame, steps: pd.DataFrame) -> str:
    by_step = ratio_by_step(outcomes, steps)
    significant = list(by_step["p_holm"] < ALPHA)
    first = next((int(by_step["step"].iloc[i]) for i in range(len(significant)) if all(significant[i:])), None)
    beyond = steps.groupby(["leak", "sub", "lr", "warmup_steps", "seed"])["ratio"].max().reset_index().merge(outcomes)
    trained = beyond[beyond["outcome"].isin(("trained", "catapult"))]
    shown = pd.DataFrame([{"by step": int(r["step"]), "rows": int(r["strata"]),
                           "seeds diverged / trained": f"{int(r['diverged'])} / {int(r['trained'])}",
                           "median peak ratio, diverged / trained": f"{r['median_diverged']:.3g} / {r['median_trained']:.3g}",
                           "AUC": r["auc"], "p": r["p"], "Holm": r["p_holm"]} for r in by_step.to_dict("records")])
    told = [int(step) for step, yes in zip(by_step["step"], significant) if yes]
    earliest = int(outcomes["diverged_step"].dropna().min()) if outcomes["diverged_step"].notna().any() else 0
    verdict = ("at no step are the seeds that diverged told apart from those that trained by how far beyond the "
               "bound they had gone (Holm p >= 0.05 at every step)" if not told else
               f"told apart at step(s) {', '.join(map(str, told))} (Holm p < 0.05) but not at every later step, so "
               "not from any step on" if first is None else
               f"from step {first} on (every later step too, Holm p < 0.05), the seeds that diverged had gone "
               f"{'further' if by_step['auc'].iloc[-1] > 0.5 else 'less far'} beyond the bound than those that "
               f"trained, in the rows that hold both (AUC {_auc_at(by_step, first):.2f} by step {first}, against "
               f"{_auc_at(by_step, 0):.2f} at step 0, where only the initialisation and the first batch count); no seed "
               f"had diverged before step {earliest}, so step {first} is {earliest - first} or more steps before any "
               "divergence, not its blow-up")
    return "\n".join([
        "### Do the first steps tell which seeds will fail?",
        "",
        "Pooled over every row above that holds seeds of both kinds: by step t, each seed's peak ratio over steps "
        "0..t, compared within its row (the stratified rank-sum test: the sum over rows of AUC - 1/2, outcomes "
        "permuted within rows, 9,999 seeded permutations), Holm over the steps; AUC is the mean over rows of "
        "P(a diverged seed's peak > a trained seed's); the medians pool the rows (warm-up rows start low by "
        "construction), the test does not. A row takes part up to the last step all its seeds were "
        f"measured at; stalled seeds take no part. Going beyond the bound is not failing: {int((trained['ratio'] > 1).sum())} of {len(trained)} "
        "seeds that trained had a ratio above 1 in their measured steps.",
        "",
        markdown_table(shown),
        "",
        f"Verdict: {verdict}. This is an association on these seeds; that the excursion beyond the bound causes "
        "the divergence is not tested (no seed's excursion was changed by itself).",
    ])


def _lesson_part(plan: FindingsPlan, outcomes: pd.DataFrame, steps: pd.DataFrame, lesson: dict) -> str:
    cell = outcomes[_is_lesson_cell(outcomes)].set_index("seed")
    if cell.empty:  # the plan measures it only where (.2, .4) is on the grid and a lesson setting
        return ""
    study = lesson_outcome(lesson, "lesson", LESSON_FAILS)
    same = all((cell.loc[seed, "outcome"] in ("trained", "catapult")) == trained
               for seed, trained in study.trained().items())
    mine = steps[(steps["leak"] == LESSON_FAILS[0]) & (steps["sub"] == LESSON_FAILS[1]) & (steps["lr"] == LESSON_LR)
                 & (steps["warmup_steps"] == 0)]
    common = int(mine.groupby("seed")["step"].count().min())
    peaks = mine[(mine["step"] < common) & mine["converged"].astype(bool)].groupby("seed")["ratio"].agg(["max", "idxmax"])
    peaks["at"] = mine.loc[peaks["idxmax"], "step"].to_numpy()
    ranks = peaks["max"].rank(ascending=False).astype(int)
    trained = peaks[cell.loc[peaks.index, "outcome"].isin(("trained", "catapult")).to_numpy()]
    failed = cell[~cell["outcome"].isin(("trained", "catapult"))]
    mine_all = outcomes[(outcomes["leak"] == LESSON_FAILS[0]) & (outcomes["sub"] == LESSON_FAILS[1])]
    fate = mine_all.pivot_table(index="seed", columns=["warmup_steps", "lr"], values="outcome", aggfunc="first")
    cold = fate[0].apply(lambda column: column.isin(("trained", "catapult")))  # seed x rate, warm-up 0
    unordered = [seed for seed, row in cold.iterrows()  # failed at a rate, trained at a higher one
                 if any(not row.iloc[i] and row.iloc[j] for i in range(len(row)) for j in range(i + 1, len(row)))]
    rows = []
    for seed, record in failed.iterrows():
        peak = peaks.loc[seed, "max"] if seed in peaks.index else math.nan
        reading = ("no converged ratio measured: unexplained here" if math.isnan(peak) else
                   "its peak came on the step before it diverged: the blow-up, not a warning"
                   if record["diverged_step"] - peaks.loc[seed, "at"] <= 1 else
                   "went further beyond the bound than every seed that trained" if peak > trained["max"].max() else
                   "within the trained seeds' range: its early ratio does not explain it")
        rows.append({"seed": seed, "outcome": record["outcome"],
                     "diverged at step": "-" if pd.isna(record["diverged_step"]) else int(record["diverged_step"]),
                     f"peak ratio, steps 0-{common - 1} (its step)": "-" if math.isnan(peak) else
                     f"{peak:.3g} ({int(peaks.loc[seed, 'at'])})",
                     f"rank of {len(peaks)}": "-" if math.isnan(peak) else int(ranks[seed]), "reading": reading,
                     **{f"at lr {lr:g}" + (f", warm-up {w:g}" if w else ""): fate.loc[seed, (w, lr)]
                        for w, lr in fate.columns if (w, lr) != (0, LESSON_LR)}})
    name = setting_name(dict(leak=LESSON_FAILS[0], sub=LESSON_FAILS[1]))
    return "\n".join([
        f"### The lesson's {name} failures at lr {LESSON_LR:g}, seed by seed",
        "",
        f"{len(failed)} of {len(cell)} seeds failed, "
        + ("the same seeds as in its lesson study (section 2), as they must be." if same else
           "NOT the same seeds as in its lesson study (section 2), which they must be: a fault to look into.")
        + f" The seeds that trained peaked at ratio {trained['max'].min():.3g}-{trained['max'].max():.3g} over "
          f"steps 0-{common - 1}. Rank 1 is the highest peak; the last columns are the same seed's outcome at "
          f"the setting's other measured rates. Across the rates without warm-up ({', '.join(f'{lr:g}' for lr in cold.columns)}), "
          + (f"{len(unordered)} of {len(cold)} seeds failed at one rate and trained at a higher one (seeds "
             f"{', '.join(map(str, unordered))}): for them failing is not monotone in the rate." if unordered else
             f"every seed that failed at one rate failed at each higher one too ({len(cold)} seeds)."),
        "",
        markdown_table(pd.DataFrame(rows)) if rows else "No seed failed.",
    ])


# -- helpers -----------------------------------------------------------------------------------------


def _auc_at(by_step: pd.DataFrame, step: int) -> float:
    return float(by_step[by_step["step"] == step]["auc"].iloc[0])


def _monotone(values: list[float]) -> bool:
    steps = [b - a for a, b in zip(values, values[1:])]
    return all(step >= 0 for step in steps) or all(step <= 0 for step in steps)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


def _warmup_name(setting: tuple[float, float]) -> str:
    return f"findings-edge-warmup-{setting[0]:g}-{setting[1]:g}"


def _cells(outcomes: pd.DataFrame, rates: dict) -> pd.DataFrame:
    """outcomes with `at`, which rate of its setting a row's is: lr90, lr50 (`rates`, the plan's
    `dynamics_rates`), or the lesson's."""
    def at(row) -> str:
        named = [name for name, lr in rates[(row["leak"], row["sub"])].items() if lr == row["lr"]]
        return " = ".join(named) or "the lesson's"

    return outcomes.assign(at=outcomes.apply(at, axis=1))


def _is_lesson_cell(outcomes: pd.DataFrame) -> pd.Series:
    return ((outcomes["leak"] == LESSON_FAILS[0]) & (outcomes["sub"] == LESSON_FAILS[1])
            & (outcomes["lr"] == LESSON_LR) & (outcomes["warmup_steps"] == 0))


def _seeds_of(outcomes: pd.DataFrame, leak: float, sub: float, lr: float, warmup: int, name: str) -> claims.Outcomes:
    rows = outcomes[(outcomes["leak"] == leak) & (outcomes["sub"] == sub) & (outcomes["lr"] == lr)
                    & (outcomes["warmup_steps"] == warmup)]
    return claims.Outcomes(name, {int(r.seed): (r.outcome in ("trained", "catapult"), float(r.val_acc),
                                                None if pd.isna(r.diverged_step) else int(r.diverged_step))
                                  for r in rows.itertuples()})
