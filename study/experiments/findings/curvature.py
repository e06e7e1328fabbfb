"""Section 4 of the findings: the curvature bound 2 (1 + momentum) / lambda_max against the measured
edge, and lambda_max along the first steps. `measure_sharpness` measures (cached beside the
database, so a second run only re-renders); `sharpness_section` writes the section."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from study.axes import BY_NAME
from study.experiments.findings import claims
from study.experiments.findings.plan import LESSON_LR, FindingsPlan
from study.experiments.findings.tables import lesson_outcome, markdown_table
from study.experiments.sharpness import TOLERANCE, sharpness
from study.place import sqlite_path


def measure_sharpness(plan: FindingsPlan, grid: pd.DataFrame, outcomes: dict, progress: bool) -> dict:
    """lambda_max at init per grid setting and seed, per seed of the mixed lesson settings, and
    along the first steps for the shifted settings; cached beside the database by configuration."""
    cache_path = Path(str(sqlite_path(plan.storage)).replace(".db", ".sharpness.json"))
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    jobs = [(leak, sub, seed, 0) for leak, sub in zip(grid["leak"], grid["sub"]) for seed in range(plan.sharpness_seeds)]
    lesson_outcomes = [(setting, lesson_outcome(outcomes, "lesson", setting)) for setting in plan.lesson_settings]
    jobs += [(leak, sub, seed, 0) for (leak, sub), setting in lesson_outcomes if 0 < setting.k < setting.n
             for seed in setting.seeds]
    jobs += [(leak, sub, seed, plan.sharpness_steps) for leak, sub in plan.shifted for seed in range(2)]
    run_key = json.dumps(_as_stored_before(plan.run.to_dict()), sort_keys=True)
    results = {}
    for leak, sub, seed, steps in tqdm(sorted(set(jobs)), desc="sharpness", disable=not progress, leave=False):
        key = f"{run_key}|{leak:g}|{sub:g}|{seed}|{steps}"
        if key not in cache:
            config = replace(plan.run, model=replace(plan.run.model, leak=leak, sub=sub),
                             train=replace(plan.run.train, seed=seed))
            cache[key] = [p.to_dict() for p in sharpness(config, steps)]
            cache_path.write_text(json.dumps(cache))
        results[(leak, sub, seed, steps)] = cache[key]
    init = pd.DataFrame([{"leak": leak, "sub": sub, "seed": seed, "lambda_max": points[0]["lambda_max"],
                          "converged": points[0]["converged"]}
                         for (leak, sub, seed, steps), points in results.items() if steps == 0])
    along = pd.DataFrame([{"leak": leak, "sub": sub, "seed": seed, **point}
                          for (leak, sub, seed, steps), points in results.items() if steps > 0 for point in points])
    return {"init": init, "steps": along}


# -- sections ----------------------------------------------------------------------------------------


def _as_stored_before(run: dict) -> dict:
    """The run configuration without the axes added since the cache began that sit at the value runs
    had before them (warm-up 0): entries cached then stay valid."""
    return {part: {k: v for k, v in values.items()
                   if not (k in BY_NAME and BY_NAME[k].stored_before is not None and v == BY_NAME[k].stored_before)}
            for part, values in run.items()}


def sharpness_section(plan: FindingsPlan, grid: pd.DataFrame, sharp: dict, outcomes: dict, pictures: list[Path]) -> str:
    """Section 4: the bound 2 (1 + momentum) / lambda_max at init against lr90, beside leak alone as a
    competitor; lambda_max values whose power iteration did not converge are left out, and counted."""
    converged = sharp["init"][sharp["init"]["converged"]]
    dropped = len(sharp["init"]) - len(converged)
    momentum = plan.run.optim.momentum
    rows = []
    for r in grid.to_dict("records"):
        values = converged[(converged["leak"] == r["leak"]) & (converged["sub"] == r["sub"])
                           & (converged["seed"] < plan.sharpness_seeds)]["lambda_max"]
        bound = 2 * (1 + momentum) / float(values.median()) if len(values) else math.nan
        rows.append({"leak": r["leak"], "sub": r["sub"], "lambda_max (median)": float(values.median()),
                     "bound 2(1+mu)/lambda": bound, "lr90": r["lr90"], "lr90_low": r["lr90_low"],
                     "lr90_high": r["lr90_high"], "lr90 / bound": r["lr90"] / bound})
    table = pd.DataFrame(rows)
    known = table.dropna(subset=["lr90", "bound 2(1+mu)/lambda"])
    rho, p = claims.rank_agreement(list(known["bound 2(1+mu)/lambda"]), list(known["lr90"]))
    rho_leak, p_leak = claims.rank_agreement(list(known["leak"]), list(known["lr90"]))
    inside = int(((known["bound 2(1+mu)/lambda"] >= known["lr90_low"].fillna(0))
                  & (known["bound 2(1+mu)/lambda"] <= known["lr90_high"].fillna(math.inf))).sum())
    above = int((known["lr90_low"] > known["bound 2(1+mu)/lambda"]).sum())
    below = int((known["lr90_high"] < known["bound 2(1+mu)/lambda"]).sum())
    seed_lines = []
    for leak, sub in plan.lesson_settings:
        mine = lesson_outcome(outcomes, "lesson", (leak, sub))
        if not 0 < mine.k < mine.n:
            continue
        values = converged[(converged["leak"] == leak) & (converged["sub"] == sub)].set_index("seed")["lambda_max"]
        failed = [values[s] for s, (ok, _, _) in mine.seeds.items() if not ok and s in values]
        trained = [values[s] for s, (ok, _, _) in mine.seeds.items() if ok and s in values]
        p_seed, verdict = claims.sharper_seeds_diverge(failed, trained)
        seed_lines.append(f"- ({leak:g}, {sub:g}) at lr {LESSON_LR:g}: lambda_max at init of the {len(failed)} failed seeds "
                          f"median {np.median(failed):.3g}, of the {len(trained)} trained {np.median(trained):.3g}: "
                          f"{verdict} (one-sided Mann-Whitney U, p = {p_seed:.2g}).")
    along = sharp["steps"]
    step_lines = []
    for (leak, sub), group in along.groupby(["leak", "sub"]):
        first, last = group[group["step"] == 0]["lambda_max"], group[group["step"] == group["step"].max()]["lambda_max"]
        peak = group.groupby("seed")["lambda_max"].max()
        step_lines.append(f"- ({leak:g}, {sub:g}): lambda_max {first.median():.3g} at init, peak {peak.median():.3g}, "
                          f"{last.median():.3g} after {int(group['step'].max())} steps at lr {plan.run.optim.lr:g} "
                          f"(median of {group['seed'].nunique()} seeds; {int((~group['converged']).sum())} of "
                          f"{len(group)} values unconverged).")
    shown = table.drop(columns=["lr90_low", "lr90_high"])
    return "\n".join([
        "## 4. Sharpness at initialisation against the edge",
        "",
        f"`python -m study sharpness`: the largest eigenvalue lambda_max of the training loss's Hessian on the seed's "
        f"first batch (power iteration on Hessian-vector products, until the residual is within {TOLERANCE:.0%}; "
        f"{dropped} of {len(sharp['init'])} values that did not converge are left out). Heavy-ball SGD on a "
        f"quadratic is stable for lr < 2 (1 + momentum) / lambda_max: the bound below (momentum {momentum:g}, "
        f"median lambda_max of {plan.sharpness_seeds} seeds), against lr90 (section 1).",
        "",
        markdown_table(shown),
        "",
        f"Across the {len(known)} settings with both, Spearman's rank correlation of lr90 with the bound is "
        f"rho = {rho:.2f} (p = {p:.2g}); with leak alone, rho = {rho_leak:.2f} (p = {p_leak:.2g}): the bound at "
        f"initialisation is a correlate of the edge to be read beside that competitor, not an explanation. "
        f"lr90's whole interval lies above the bound for {above} settings and below it for {below}; it holds the "
        f"bound for {inside}; lr90 / bound runs from {known['lr90 / bound'].min():.2f} to "
        f"{known['lr90 / bound'].max():.2f}.",
        "",
        "Across seeds of one setting:",
        *(seed_lines or ["- no lesson setting had both trained and failed seeds."]),
        "",
        "An observation, not a test (a handful of seeds): what the first steps at the lesson's lr do to lambda_max.",
        *step_lines,
        "",
        *[f"![{p.stem}](findings/{p.name})" for p in pictures if p.stem == "sharpness"],
    ])
