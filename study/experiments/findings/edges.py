"""Sections 1 and 3 of the findings: the lesson grid's edge as lr90 with its interval, and how the
edge moves with momentum and init scale as laws (`study.edge_law`)."""

from __future__ import annotations

import math

import pandas as pd

from study.experiments.findings import claims
from study.experiments.findings.plan import LESSON_LR, LESSON_MOMENTUM, FindingsPlan
from study.experiments.findings.tables import markdown_table, setting_name
from study.ladder import EdgeDesign
from study.reliability import ALPHA
from study.results import law_table, seed_outcomes

# Exponents of lr90 ~ (1 - momentum)^alpha that a named rule of thumb implies.
MOMENTUM_RULES = {"lr constant": 0.0, "lr / sqrt(1 - mu) constant": 0.5, "lr / (1 - mu) constant": 1.0}


def interval(row: dict, name: str = "lr90") -> str:
    """"0.24 (0.2-0.29)", an open end as "?"."""
    def end(value: float) -> str:
        return "?" if math.isnan(value) else f"{value:.3g}"
    return "-" if math.isnan(row[name]) else f"{row[name]:.3g} ({end(row[name + '_low'])}-{end(row[name + '_high'])})"


def edge_section(grid: pd.DataFrame, seeds: pd.DataFrame, design: EdgeDesign, minutes: float,
                 pictures: list) -> str:
    """grid: `results.edge_table` of the grid's search; seeds: its `results.seed_frame`."""
    rows = grid.to_dict("records")
    below = [r for r in rows if r["lr90_low"] > LESSON_LR]  # lr 0.2 below the whole interval
    above = [r for r in rows if r["lr90_high"] < LESSON_LR]
    shown = pd.DataFrame([{"leak": r["leak"], "sub": r["sub"], "lr90 (95% CI)": interval(r),
                           "lr50 (95% CI)": interval(r, "lr50"), "slope": r["slope"], "link": r["link"],
                           "trainings": r["trainings"]} for r in rows])
    order = claims.monotonicity(seeds)
    twins = [" and ".join(setting_name(r) for r in group.to_dict("records"))
             for _, group in grid.groupby(["lr90", "lr90_low", "lr90_high", "trainings"]) if len(group) > 1]
    same = ("" if not twins else " Settings with the same number trained at the same rates get the same curve (the "
            "adaptive method's next rate follows from those counts alone): " + "; ".join(twins) + ".")
    adaptive = design.adaptive()
    precise = sum(r["lr90_high"] / r["lr90_low"] <= design.precision for r in rows)
    return "\n".join([
        f"## 1. The edge of the lesson grid (momentum {LESSON_MOMENTUM:g})",
        "",
        f"Per setting, the rate lr90 at which 90% of seeds train, with its 95% interval, from a curve "
        f"P(trained | lr) fitted to every seed the search trained (`python -m study edge`: logit or probit in "
        f"log lr, Firth-penalised, profile-likelihood intervals widened over both links; README, *The edge as a "
        f"curve*). The adaptive method chose each next rate in {adaptive.low:g}-{adaptive.high:g} where lr90 was "
        f"least known, {design.round_seeds} fresh seeds at a time, until lr90's interval had upper / lower at "
        f"most {design.precision:g} or the setting had {design.max_trainings} trainings: the first for {precise} "
        f"of {len(rows)} settings. {int(grid['trainings'].sum())} trainings, {minutes:.0f} min "
        f"(the search's wall time). '?' marks an end the data cannot bound. The second edition's bisection and "
        f"its sequential verdicts are not used: their error rates held only at the two shares the test weighed "
        f"(0.9 against 0.6), and a rung between them could be called either way. The intervals are nominal 95%: "
        f"on simulated curves they held the true lr90 in 0.93-0.955 of settings as steep as these and in 0.905 "
        f"on a shallow one (README, *The edge as a curve*), so among {len(rows)} settings one or two may miss.",
        "",
        f"The lesson's lr {LESSON_LR:g} lies below the whole interval for {len(below)} of {len(rows)} settings (the "
        f"fitted curve puts P(trained | {LESSON_LR:g}) above 0.9 there) and above it for {len(above)}: "
        f"{', '.join(setting_name(r) for r in above) or 'none'}; the others cannot be placed either side of it.",
        "",
        markdown_table(shown),
        "",
        f"The curve assumes that P(trained) never rises with the rate. Checked on the probes: of "
        f"{order['pairs']} pairs of probes of one setting, the higher rate trained a larger share in "
        f"{order['higher_trained_more']} (chance alone does that), significantly (Fisher's exact test, one-sided, "
        f"p < {ALPHA:g}, uncorrected: about 5% of pairs would be by chance, and with {design.round_seeds} seeds "
        f"a probe only 4/4 against 0/4 gets there) in {order['significant']}. Failures: "
        f"{claims.failure_modes(seeds)}.{same}",
        "",
        *[f"![{p.stem}](findings/{p.name})" for p in pictures if p.stem in ("edge_heatmap", "edge_curves")],
    ])


def law_section(plan: FindingsPlan, edges: dict, grid: pd.DataFrame) -> str:
    """edges: name -> (design, study, edge_table) of every edge search of the plan."""
    outcomes = pd.concat([seed_outcomes(study) for _, study, _ in edges.values()], ignore_index=True)
    shifted = outcomes[[(leak, sub) in plan.shifted for leak, sub in zip(outcomes["leak"], outcomes["sub"])]]
    laws = law_table(shifted, fit_draws=plan.law_draws)
    lines = ["## 3. Momentum and init scale move the edge: laws", "",
             "For each setting below, one curve fitted jointly to every seed at every level of the axis, in which "
             "lr90 (and every other quantile) scales as (1 - momentum)^alpha, or as init_scale^beta, the levels "
             "sharing one slope (`study.edge_law`): the exponent with its profile-likelihood 95% interval; the law "
             "tested against a free curve per level (parametric bootstrap, `law fit p`: small says the law does "
             "not describe the levels); and one test whether the settings share the exponent (likelihood ratio, "
             "chi2). The grid's rows (momentum 0.85, init_scale 1) are levels of both."]
    for axis, name in (("momentum", "alpha"), ("init_scale", "beta")):
        for leak, sub in plan.shifted:
            other = "init_scale" if axis == "momentum" else "momentum"
            level = 1.0 if axis == "momentum" else LESSON_MOMENTUM
            rows = pd.concat([table for _, _, table in edges.values()])
            rows = rows[(rows["leak"] == leak) & (rows["sub"] == sub) & (rows[other] == level)]
            rows = rows.drop_duplicates(subset=[axis]).sort_values(axis)
            law = laws[(laws["axis"] == axis) & (laws["leak"] == leak) & (laws["sub"] == sub)].iloc[0]
            lines += ["", f"### ({leak:g}, {sub:g}) across {axis}", "",
                      markdown_table(pd.DataFrame([{axis: r[axis], "lr90 (95% CI)": interval(r), "trainings": r["trainings"]}
                                                   for r in rows.to_dict("records")])),
                      "", _law_sentence(law, axis, name)]
        mine = laws[laws["axis"] == axis]
        same = mine["same_exponent_p"].iloc[0]
        unfit = bool((mine["fit_p"] < ALPHA).any())
        lines += ["", f"One {name} for {' and '.join(setting_name(dict(leak=l, sub=s)) for l, s in plan.shifted)}: "
                      + ("not tested (one setting)" if math.isnan(same) else
                         "not compared: the law does not describe the levels of every setting" if unfit else
                         f"rejected (likelihood ratio, chi2 approximate, p = {same:.2g}): their exponents differ"
                         if same < ALPHA else
                         f"not rejected (likelihood ratio, chi2 approximate, p = {same:.2g}): their exponents cannot "
                         "be told apart with these seeds")
                      + "."]
    return "\n".join(lines)


def _law_sentence(law: pd.Series, axis: str, name: str) -> str:
    if math.isnan(law["exponent"]):
        return f"No law: {law['levels']} levels, {law['k']} of {law['n']} seeds trained."
    low, high = law["exponent_low"], law["exponent_high"]
    def number(value: float) -> str:
        return "?" if math.isnan(value) else f"{value:.2f}".replace("-0.00", "0.00")
    text = (f"lr90 ~ {'(1 - momentum)' if axis == 'momentum' else 'init_scale'}^{name}, {name} = "
            f"{number(law['exponent'])} [{number(low)}, {number(high)}] (95%), {law['link']}, {law['n']} seeds at "
            f"{law['levels']} levels")
    if law["levels"] < 3:
        text += (f"; with two levels any two points fit a power law: law fit p = {law['fit_p']:.2g} tests only "
                 "that they share a slope")
    elif law["fit_p"] < ALPHA:
        return text + (f"; law fit p = {law['fit_p']:.2g}: the law does not describe these levels, so the exponent "
                       "only summarises them.")
    else:
        text += f"; the law is not rejected (law fit p = {law['fit_p']:.2g}), which does not confirm it"
    if axis != "momentum":
        return text + "."
    inside = [rule for rule, value in MOMENTUM_RULES.items() if not (value < low or value > high)]
    outside = [rule for rule in MOMENTUM_RULES if rule not in inside]
    inside_text = ", ".join(inside) or "none of the rules of thumb"
    return (text + f". Under the law, inside the exponent's 95% interval: {inside_text}; outside it: "
            f"{', '.join(outside) or 'none'} (their exponents {', '.join(f'{v:g}' for v in MOMENTUM_RULES.values())}).")
