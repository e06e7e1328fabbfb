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
from study.dynamics_tables import TRAINED, before_spike, outcome_frame, outcome_summary, ratio_by_step, step_frame
from study.edge_law import same_curve_p
from study.experiments.findings import claims
from study.experiments.findings.edges import interval
from study.experiments.findings.plan import LESSON_FAILS, LESSON_LR, LESSON_MOMENTUM, FindingsPlan
from study.experiments.findings.tables import lesson_outcome, markdown_table, setting_name, verdict_table
from study.reliability import ALPHA, clopper_pearson, holm
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
        f"{plan.seeds - 1}): the warm-up verdicts compare the same seeds (McNemar), and the by-step test permutes "
        "whole seeds across rows. By construction, not findings: with "
        "warm-up a step's rate, hence its ratio, is (i + 1) / K of the full one for the first K steps; the probe "
        "only reads, so a seed's outcome is the one it has without being measured. Cost: "
        f"{int(sum(table['trainings'].sum() for _, _, table in warmup_edges))} trainings for the warm-up edges and "
        f"{len(outcomes)} measured runs, {minutes:.0f} min of the studies' wall time (machine and date: the header).",
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
        p_values.append(same_curve_p(mine["lr"], mine["trained"], mine["warmup_steps"], draws=plan.curve_draws))
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
        across.append(same_curve_p(mine["lr"], mine["trained"], [f"{leak:g}, {sub:g}" for leak, sub in zip(mine["leak"], mine["sub"])],
                                   draws=plan.curve_draws))
    moved = [f"{row['setting']} (Holm p < {ALPHA:g}; lr90 " + " / ".join(f"{lr90:.3g}" for lr90 in row["lr90s"])
             + f" at warm-up {' / '.join(map(str, warmups))})" for row, h in zip(rows, holm(p_values)) if h < ALPHA]
    apart = [f"{w} steps, {'rejected' if h < ALPHA else 'not rejected'} (p = {p:.2g}, Holm {h:.2g})"
             for w, p, h in zip(warmups, across, holm(across))]
    names = ", ".join(setting_name(dict(leak=leak, sub=sub)) for leak, sub in plan.warmup_settings)
    return "\n".join([
        f"### Warm-up and the edge (momentum {LESSON_MOMENTUM:g})",
        "",
        f"The edge of {names} again with the rate rising linearly over the first {' or '.join(map(str, plan.warmups))} "
        "steps (`python -m study edge --warmup-steps`), fitted as in section 1; warm-up 0 is the grid's own search "
        "(the same seeds at the same rates). *One curve*: whether every warm-up shares one curve against one "
        "location per warm-up with a shared slope (`same_curve_p`, parametric bootstrap with "
        f"{plan.curve_draws:,} draws, so a p near 0.05 is known to about "
        f"+-{1.96 * math.sqrt(0.05 * 0.95 / plan.curve_draws):.2g} and none is below {1 / (plan.curve_draws + 1):.2g}; no power against a change of slope "
        "alone, so not rejecting it is not \"the same curve\"; the levels share seeds, which the test ignores, and "
        "their rates were chosen adaptively, which it takes as fixed), Holm over the settings. `trainings`: all "
        "three warm-ups, warm-up 0's from the grid.",
        "",
        markdown_table(shown),
        "",
        ("The warm-ups' curves are not all one for " + "; ".join(moved) + ": an omnibus test, so which levels "
         "differ, and whether in one direction with the warm-up's length, is not tested." if moved else
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
        "trained (no spike)": r["trained"], "catapult": r["catapult"], "diverged": r["diverged"],
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
        "where lambda_max blows up, would otherwise decide it by construction) and before its loss first rose above "
        "2x its first (the blow-up itself), the median of the seeds that "
        "diverged against those that trained (catapults with them), two-sided Mann-Whitney by permutation per row, "
        "uncorrected and descriptive (the next tables pool the rows).",
        "",
        markdown_table(shown),
        "",
        verdict_table(verdicts),
    ])


def _ratio_part(outcomes: pd.DataFrame, steps: pd.DataFrame) -> str:
    parts = ["### Do the first steps go with failing?", "",
             "By step t, each run's peak ratio over its steps 0..t before its loss first rose above 2x its first "
             "(`before_spike`: the blow-up never counts), compared within its row, which within a row is comparing "
             "lambda_max (the ratio is lambda_max times that row's constant). The stratified rank-sum test: the sum "
             "over rows of AUC - 1/2, one permutation of the seed numbers shared by every row (rows reuse the same "
             "seeds, hence initial weights and first batches, so a seed is one unit of evidence however many rows "
             "hold it), 9,999 seeded permutations, Holm over the steps; AUC is the mean over rows of P(a diverged run's "
             "peak > a trained run's), catapults with the trained, stalled runs compared with none. Rows without and "
             "with warm-up are tested apart: with warm-up the early ratios are scaled down by construction, and "
             "which seeds fail differs."]
    for title, mine in (("Without warm-up", outcomes["warmup_steps"] == 0), ("With warm-up", outcomes["warmup_steps"] > 0)):
        rows = outcomes[mine]
        if rows.empty:
            continue
        by_step = ratio_by_step(rows, steps.merge(rows[["leak", "sub", "lr", "warmup_steps", "seed"]]))
        if by_step.empty:
            parts += ["", f"{title}: no row holds runs of both kinds."]
            continue
        told = [int(step) for step, p in zip(by_step["step"], by_step["p_holm"]) if p < ALPHA]
        shown = pd.DataFrame([{"by step": int(r["step"]), "AUC": r["auc"], "p": r["p"], "Holm": r["p_holm"]}
                              for r in by_step.to_dict("records")])
        verdict = ("at no step can the runs that diverged be told apart from those that trained with these seeds "
                   "(Holm p >= 0.05 at every step)" if not told else
                   f"at step(s) {_ranges(told)} (Holm p < 0.05) the runs that diverged had the higher peak within "
                   f"their rows (AUC {_span(by_step[by_step['step'].isin(told)]['auc'])}: a tendency, not a rule); at "
                   "the other steps they cannot be told apart with these seeds")
        parts += ["", f"{title}: {by_step['strata'].iloc[0]} rows, {by_step['diverged'].iloc[0]} diverged against "
                  f"{by_step['trained'].iloc[0]} trained runs (of {rows['seed'].nunique()} seeds).", "",
                  markdown_table(shown), "", f"Verdict: {verdict}."]
    beyond = before_spike(steps).groupby(["leak", "sub", "lr", "warmup_steps", "seed"])["ratio"].max()
    beyond = beyond.reset_index().merge(outcomes)
    beyond = beyond[beyond["outcome"].isin(TRAINED)]
    counts = []
    for title, mine in (("without warm-up", beyond["warmup_steps"] == 0), ("with warm-up", beyond["warmup_steps"] > 0)):
        k, n = int((beyond[mine]["ratio"] > 1).sum()), int(mine.sum())
        if n:
            low, high = clopper_pearson(k, n)
            counts.append(f"{k}/{n} {title} (exact 95% CI {low:.2f}-{high:.2f})")
    parts += ["", "Going beyond the bound is not failing: of the runs that trained, a ratio above 1 before any spike "
              f"in {' and '.join(counts)} (with warm-up the ratio is scaled down by construction). The association is "
              "on these seeds; that the early sharpness causes the divergence is not tested (no run's sharpness was "
              "changed by itself)."]
    return "\n".join(parts)


def _lesson_part(plan: FindingsPlan, outcomes: pd.DataFrame, steps: pd.DataFrame, lesson: dict) -> str:
    cell = outcomes[_is_lesson_cell(outcomes)].set_index("seed")
    if cell.empty:  # the plan measures it only where (.2, .4) is on the grid and a lesson setting
        return ""
    study = lesson_outcome(lesson, "lesson", LESSON_FAILS)
    same = all((cell.loc[seed, "outcome"] in TRAINED) == trained
               for seed, trained in study.trained().items())
    mine = before_spike(steps[(steps["leak"] == LESSON_FAILS[0]) & (steps["sub"] == LESSON_FAILS[1])
                              & (steps["lr"] == LESSON_LR) & (steps["warmup_steps"] == 0)])
    peaks = mine.groupby("seed")["ratio"].agg(["max", "idxmax"])
    peaks["at"] = mine.loc[peaks["idxmax"], "step"].to_numpy()
    ranks = peaks["max"].rank(ascending=False).astype(int)
    trained = peaks[cell.loc[peaks.index, "outcome"].isin(TRAINED).to_numpy()]
    failed = cell[~cell["outcome"].isin(TRAINED)]
    mine_all = outcomes[(outcomes["leak"] == LESSON_FAILS[0]) & (outcomes["sub"] == LESSON_FAILS[1])]
    fate = mine_all.pivot_table(index="seed", columns=["warmup_steps", "lr"], values="outcome", aggfunc="first")
    cold = fate[0].apply(lambda column: column.isin(TRAINED))  # seed x rate, warm-up 0
    unordered = [seed for seed, row in cold.iterrows()  # failed at a rate, trained at a higher one
                 if any(not row.iloc[i] and row.iloc[j] for i in range(len(row)) for j in range(i + 1, len(row)))]
    rows = []
    for seed, record in failed.iterrows():
        peak = peaks.loc[seed, "max"] if seed in peaks.index else math.nan
        margin = "-" if math.isnan(peak) else f"{peak / trained['max'].max() - 1:+.0%}"
        rows.append({"seed": seed, "outcome": record["outcome"],
                     "diverged at step": "-" if pd.isna(record["diverged_step"]) else int(record["diverged_step"]),
                     "peak ratio before its loss spiked (its step)": "-" if math.isnan(peak) else
                     f"{peak:.3g} ({int(peaks.loc[seed, 'at'])})",
                     f"rank of {len(peaks)}": "-" if math.isnan(peak) else int(ranks[seed]),
                     "against the highest trained run": margin,
                     **{f"at lr {lr:g}" + (f", warm-up {w:g}" if w else ""): fate.loc[seed, (w, lr)]
                        for w, lr in fate.columns if (w, lr) != (0, LESSON_LR)}})
    name = setting_name(dict(leak=LESSON_FAILS[0], sub=LESSON_FAILS[1]))
    return "\n".join([
        f"### The lesson's {name} failures at lr {LESSON_LR:g}, seed by seed",
        "",
        f"{len(failed)} of {len(cell)} seeds failed, "
        + ("the same seeds as in its lesson study (section 2), as they must be." if same else
           "NOT the same seeds as in its lesson study (section 2), which they must be: a fault to look into.")
        + f" Each run's peak ratio over its measured steps before its loss first rose above 2x its first (the "
          f"seeds that trained: {trained['max'].min():.3g}-{trained['max'].max():.3g}); rank 1 is the highest. One "
          f"failed run's place among {len(peaks)} is not an explanation: a failed run above every trained one happens "
          f"by chance with probability 1/{len(trained) + 1} where {len(trained)} trained; the ranks say where each "
          "failure sits, no more. The last columns "
          "are the same seed's outcome at the setting's other measured rates (other runs: the rate changes every step "
          f"after the first). Across the rates without warm-up ({', '.join(f'{lr:g}' for lr in cold.columns)}), "
          + (f"{len(unordered)} of {len(cold)} seeds failed at one rate and trained at a higher one (seeds "
             f"{', '.join(map(str, unordered))}), which does not contradict section 1's assumption that the share "
             "of seeds trained falls with the rate (a statement about many seeds)." if unordered else
             f"every seed that failed at one rate failed at each higher one too ({len(cold)} seeds)."),
        "",
        markdown_table(pd.DataFrame(rows)) if rows else "No seed failed.",
    ])


# -- helpers -----------------------------------------------------------------------------------------


def _span(values: pd.Series) -> str:
    """"0.77-0.8", or "0.79" where the values agree to two digits."""
    low, high = f"{values.min():.2f}", f"{values.max():.2f}"
    return low if low == high else f"{low}-{high}"


def _ranges(steps: list[int]) -> str:
    """[5, 6, 7, 9] -> "5-7, 9"."""
    runs, start = [], steps[0]
    for previous, step in zip(steps, steps[1:] + [None]):
        if step != previous + 1:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = step
    return ", ".join(runs)


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
    return claims.Outcomes(name, {int(r.seed): (r.outcome in TRAINED, float(r.val_acc),
                                                None if pd.isna(r.diverged_step) else int(r.diverged_step))
                                  for r in rows.itertuples()})
