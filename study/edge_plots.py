"""Pictures of an edge search: the largest stable learning rate of each setting, each setting's share
of trained seeds along the ladder, and the curvature bound against the edge. Figures as in
`study.plots`: made without pyplot, read from tables (`study.results`), never trained."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from study.axes import NAMES as AXIS_NAMES
from study.plots import lazy_seaborn


def edge_heatmap_figure(table: pd.DataFrame, ladder: tuple[float, ...], fitted: bool = False) -> Figure:
    """The largest stable learning rate of each setting: leak (x) by sub (y) on a log colour scale,
    one panel per value of the other axes (init_scale, momentum, ...); each cell reads `stable < first unstable`, "< lowest rung"
    when no rung was stable, "> stable" when the ladder ended first. With `fitted` (the adaptive
    method, whose rates are no ladder), the fitted lr90 instead, each cell `lr90 (low-high)`, its 95%
    interval. table: `edge.edge_table`; ladder: the rates' range for the colours."""
    from matplotlib.colors import LogNorm

    below = ladder[0] if fitted else ladder[0] / (ladder[1] / ladder[0])  # colour of "not stable at the lowest rung"
    others = [name for name in AXIS_NAMES if name in table and name not in ("leak", "sub")]
    varying = [name for name in others if table[name].nunique() > 1]
    fixed = ", ".join(f"{name} {table[name].iloc[0]:g}" for name in others if name not in varying)
    panels = list(table.groupby(varying)) if varying else [((), table)]
    leaks, subs = sorted(table["leak"].unique()), sorted(table["sub"].unique())
    fig = Figure(figsize=(max(5.5, 2.4 + 1.1 * len(leaks) * len(panels)), 1.8 + 0.65 * len(subs)),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    norm = LogNorm(vmin=below, vmax=ladder[-1])
    for ax, (values, group) in zip(axes, panels):
        cells = group.pivot_table(index="sub", columns="leak", values="lr90" if fitted else "max_stable_lr",
                                  aggfunc="first", dropna=False).reindex(index=subs, columns=leaks)
        labels = group.set_index(["sub", "leak"]).apply(_fitted_label if fitted else _edge_label, axis=1,
                                                        ladder=ladder)
        annot = [[labels.get((s, l), "") for l in leaks] for s in subs]
        lazy_seaborn().heatmap(cells.fillna(below), ax=ax, norm=norm, cmap="viridis", annot=np.array(annot), fmt="",
                           cbar=ax is axes[-1], cbar_kws={"label": "lr90" if fitted else "largest stable lr"},
                           linewidths=0.5,
                           linecolor="white", annot_kws={"fontsize": 7})
        ax.invert_yaxis()
        if ax is axes[-1]:
            ax.collections[0].colorbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_title(", ".join(f"{name} {value:g}" for name, value in zip(varying, values)) or fixed, fontsize=9)
        ax.set_xlabel("leak")
        ax.set_ylabel("sub")
    title = ("The rate at which 90% of seeds train (fitted)\n(cell: lr90 and its 95% interval" if fitted else
             "Largest lr that trains reliably\n(cell: stable rung < first unstable rung")
    fig.suptitle(title + (f"; {fixed}" if varying and fixed else "") + ")", fontsize=10)
    return fig


def _fitted_label(row: pd.Series, ladder: tuple[float, ...]) -> str:
    if not row["done"]:
        return "?"
    if np.isnan(row["lr90"]):
        return "no curve"
    low, high = (f"{row[c]:.3g}" if not np.isnan(row[c]) else "open" for c in ("lr90_low", "lr90_high"))
    return f"{row['lr90']:.3g}\n({low}-{high})"


def _edge_label(row: pd.Series, ladder: tuple[float, ...]) -> str:
    if not row["done"]:
        return "?"
    if np.isnan(row["max_stable_lr"]):
        return f"< {ladder[0]:.3g}"
    if np.isnan(row["first_unstable_lr"]):
        return f"> {row['max_stable_lr']:.3g}"
    return f"{row['max_stable_lr']:.3g}\n< {row['first_unstable_lr']:.3g}"


def edge_curves_figure(probes: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Per setting, the fraction of seeds trained at each probed rung with its exact 95% interval
    (band), and on the right axis the mean validation accuracy of the seeds that trained.
    probes: `edge.probe_frame`; table: `edge.edge_table` (its order is the panels' order)."""
    settings = table[[name for name in AXIS_NAMES if name in table]].to_dict("records")
    varying = [name for name in settings[0] if name not in ("leak", "sub") and table[name].nunique() > 1]
    rungs = sorted(probes["lr"].unique())
    ticks = rungs if len(rungs) <= 16 else None  # an adaptive search's rates are continuous: log ticks
    columns = min(5, len(settings))
    rows = -(-len(settings) // columns)
    fig = Figure(figsize=(3.1 * columns, 2.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    for ax, setting, edge in zip(axes.flat, settings, table.to_dict("records")):
        mine = probes[(probes[list(setting)] == pd.Series(setting)).all(axis=1)].sort_values("lr")
        fraction = mine["trained"] / mine["n_seeds"]
        if ticks is not None:  # rungs: a band and a line along them
            ax.fill_between(mine["lr"], mine["ci_low"], mine["ci_high"], color="tab:blue", alpha=0.2,
                            label="exact 95% interval")
            ax.plot(mine["lr"], fraction, "o-", color="tab:blue", ms=4, label="seeds trained (k/n)")
        else:  # continuous rates, some probed twice: each probe on its own, no line to zigzag between them
            ax.errorbar(mine["lr"], fraction, yerr=[fraction - mine["ci_low"], mine["ci_high"] - fraction], fmt="o",
                        color="tab:blue", ms=4, elinewidth=0.8, alpha=0.7, label="seeds trained (k/n, exact 95%)")
        for lr, k, n in zip(mine["lr"], mine["trained"], mine["n_seeds"]):
            ax.annotate(f"{k}/{n}", (lr, k / n), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6)
        if not np.isnan(edge["max_stable_lr"]):
            ax.axvline(edge["max_stable_lr"], color="tab:green", linestyle="--", linewidth=1)
        if not np.isnan(edge["lr90"]):
            _draw_curve(ax, edge, mine["lr"])
        accuracy = ax.twinx()
        accuracy.plot(mine["lr"], mine["trained_acc_mean"], "s", color="tab:orange", ms=4,
                      label="val acc of trained seeds (right)")
        accuracy.set_ylim(0.5, 1.0)
        accuracy.tick_params(labelsize=7, colors="tab:orange")
        ax.set_xscale("log")
        if ticks is not None:
            ax.set_xticks(ticks, [f"{lr:.3g}" for lr in ticks], rotation=60, fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.05, 0.1, 0.2, 0.5, ...
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis overlap here
        ax.set_ylim(-0.05, 1.12)
        ax.set_title(", ".join(f"{name} {setting[name]:g}" for name in ("leak", "sub", *varying)), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    handles = [h for ax in (axes.flat[0], accuracy) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8)
    fig.supxlabel("learning rate\ngrey: the fitted curve; green: lr90 and its 95% interval"
                  + ("; dashed: the largest stable rung" if table["max_stable_lr"].notna().any() else ""), fontsize=8)
    fig.supylabel("fraction of seeds trained", fontsize=9)
    return fig


def _draw_curve(ax, edge: dict, lrs: pd.Series) -> None:
    """The fitted curve across the rates probed, and lr90 with its interval (an open end to the edge)."""
    from scipy import special, stats

    rates = np.geomspace(lrs.min(), lrs.max(), 100)
    at90 = special.logit(0.9) if edge["link"] == "logit" else stats.norm.ppf(0.9)
    eta = at90 + edge["slope"] * (np.log(rates) - np.log(edge["lr90"]))
    ax.plot(rates, special.expit(eta) if edge["link"] == "logit" else stats.norm.cdf(eta), color="grey", linewidth=1)
    low = edge["lr90_low"] if not np.isnan(edge["lr90_low"]) else rates[0]
    high = edge["lr90_high"] if not np.isnan(edge["lr90_high"]) else rates[-1]
    ax.axvspan(low, high, color="tab:green", alpha=0.12)
    ax.plot([edge["lr90"]], [0.9], "D", color="tab:green", ms=4)


def edge_figures(table: pd.DataFrame, probes: pd.DataFrame, ladder: tuple[float, ...],
                 fitted: bool = False) -> dict[str, Figure]:
    """An edge study's two pictures by file name: the largest stable rate (or, `fitted`, lr90) per
    setting, and each setting's share of trained seeds along the rates probed with its fitted curve.
    table: `edge_table`; probes: `probe_frame`."""
    return {"edge_heatmap": edge_heatmap_figure(table, ladder, fitted),
            "edge_curves": edge_curves_figure(probes, table)}


def sharpness_figure(edges: pd.DataFrame, init: pd.DataFrame, along: pd.DataFrame, momentum: float) -> Figure:
    """Left: per setting, the stability bound 2 (1 + momentum) / lambda_max at initialisation (median
    and range over seeds) against the fitted lr90 and its 95% interval (an open end drawn to the
    estimate, the marker hollow), log-log, with the diagonal. Right: lambda_max along the first
    steps, per seed. edges: `results.edge_table`; init: leak, sub, seed, lambda_max; along: leak,
    sub, seed, step, lambda_max."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for r in edges.to_dict("records"):
        values = init[(init["leak"] == r["leak"]) & (init["sub"] == r["sub"])]["lambda_max"]
        if np.isnan(r["lr90"]) or values.empty:
            continue
        bounds = 2 * (1 + momentum) / values
        low, high = (r["lr90"] if np.isnan(r[end]) else r[end] for end in ("lr90_low", "lr90_high"))
        colour = "tab:red" if r["sub"] > 0 else "tab:blue"
        open_end = np.isnan(r["lr90_low"]) or np.isnan(r["lr90_high"])
        left.errorbar(r["lr90"], bounds.median(), xerr=[[r["lr90"] - low], [high - r["lr90"]]],
                      yerr=[[bounds.median() - bounds.min()], [bounds.max() - bounds.median()]], fmt="o", ms=4,
                      color=colour, mfc="white" if open_end else colour, elinewidth=0.8)
        left.annotate(f"({r['leak']:g}, {r['sub']:g})", (r["lr90"], bounds.median()), textcoords="offset points",
                      xytext=(4, 3), fontsize=6)
    span = [min(left.get_xlim()[0], left.get_ylim()[0]), max(left.get_xlim()[1], left.get_ylim()[1])]
    left.plot(span, span, color="grey", linestyle=":", label="bound = edge")
    left.set_xscale("log")
    left.set_yscale("log")
    for axis in (left.xaxis, left.yaxis):  # a log axis's minor labels overlap in this small a panel
        axis.set_minor_formatter(NullFormatter())
    left.set_xlabel("measured edge: lr90 and its 95% interval")
    left.set_ylabel(f"2 (1 + {momentum:g}) / lambda_max at init")
    left.scatter([], [], color="tab:blue", label="sub = 0")
    left.scatter([], [], color="tab:red", label="sub > 0")
    left.legend(fontsize=8)
    left.set_title("The curvature bound at initialisation against the edge", fontsize=10)
    for (leak, sub, seed), group in along.groupby(["leak", "sub", "seed"]):
        right.plot(group["step"], group["lambda_max"], "o-", ms=3, label=f"({leak:g}, {sub:g}) seed {seed}")
    right.set_yscale("log")
    right.set_xlabel("optimiser step")
    right.set_ylabel("lambda_max on the first batch")
    right.legend(fontsize=7)
    right.set_title("lambda_max along the first steps", fontsize=10)
    return fig
