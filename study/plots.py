"""Pictures: one run's activation statistics (the lesson's charts), a study's heatmaps, the depth
experiments' profiles.

Each function returns a matplotlib `Figure` (shown inline in Jupyter); `save_figures` writes them.
Figures are made without pyplot, so nothing here picks a backend or keeps a figure alive: the
command line chooses file-only Agg, a notebook keeps its own. Plots read results (a run's
`LayerHistory`, a study's stored trials); they never train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from study import interrupts
from study.axes import NAMES as AXIS_NAMES
from study.design import CONFIG_ATTR, upgrade_stored_config
from study.results import is_lesson_setting, seed_frame, study_threshold, trials_frame
from study.stats import HIST_BINS, HIST_MAX, LayerHistory

# (column, title, colour map, fixed range): fixed so that pictures compare across studies.
HEATMAP_METRICS = (
    ("mean_val_acc", "mean validation accuracy over seeds", "viridis", (0.1, 0.9)),
    ("worst_acc", "worst seed's validation accuracy", "viridis", (0.1, 0.9)),
    ("acc_std", "seed std of validation accuracy", "rocket_r", (0.0, 0.4)),
    ("frac_trained", "fraction of seeds that trained", "viridis", (0.0, 1.0)),
    ("near_zero_last", "near-zero fraction, last hidden layer", "rocket_r", (0.0, 1.0)),
)
MAX_AXIS_VALUES = 8  # more distinct values than this (range samplers) are binned
N_BINS = 5


def _seaborn():
    """seaborn, imported on first use: with scipy it adds ~1 s to the start of every search worker,
    and workers draw no heatmaps."""
    import seaborn

    return seaborn


def save_figures(figures: dict[str, Figure], out_dir: Path, dpi: int = 90) -> list[Path]:
    """Each figure as `out_dir/NAME.png`; the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        interrupts.check()  # each picture takes a second or more
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1], dpi=dpi)
    return paths


def activation_figure(history: list[LayerHistory], title: str) -> Figure:
    """The lesson's three pictures of one run: per-layer mean and std over training steps, the
    "colour dim" image (log1p of the |a| histogram over time, one panel per layer), and the share
    of activations near zero (lowest histogram bin) per layer."""
    n = len(history)
    fig = Figure(figsize=(3 * max(n, 3), 11))
    axes = fig.subplot_mosaic(
        [["mean"] * n, ["std"] * n, [f"hist{i}" for i in range(n)], ["near"] * n], height_ratios=[1, 1, 1.2, 1],
    )
    # Fixed margins: constrained layout took half of the drawing time, and a study draws one per run.
    fig.subplots_adjust(left=0.08, right=0.98, top=0.94, bottom=0.05, hspace=0.35, wspace=0.3)
    for index, layer in enumerate(history):
        label = f"layer {index + 1}"
        axes["mean"].plot(layer.steps, layer.mean, label=label)
        axes["std"].plot(layer.steps, layer.std, label=label)
        axes["near"].plot(layer.steps, layer.near_zero_frac, label=label)
        image = np.log1p(np.asarray(layer.hist, dtype=float).T)  # (bins, steps)
        ax = axes[f"hist{index}"]
        if image.size:
            ax.imshow(image, origin="lower", aspect="auto", cmap="viridis",
                      extent=(layer.steps[0], layer.steps[-1] + 1, 0, HIST_MAX))
        ax.set_title(f"{label}: log1p histogram of |a|", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("|a|")
    axes["mean"].set_ylabel("mean")
    axes["std"].set_ylabel("std")
    axes["near"].set_ylabel(f"share of |a| < {HIST_MAX / HIST_BINS:g}")
    axes["near"].set_ylim(0, 1)
    axes["near"].set_xlabel("step")
    axes["mean"].legend(fontsize=8, ncol=n)
    for ax in axes.values():
        ax.locator_params(nbins=5)  # matplotlib's tick objects were most of the drawing time
    fig.suptitle(title)
    return fig


def axis_labels(values: pd.Series, log: bool = False) -> pd.Series:
    """Values as heatmap axis labels: themselves when few, else the centre of one of N_BINS bins."""
    if values.nunique() <= MAX_AXIS_VALUES:
        return values.round(4)
    lo, hi = values.min(), values.max()
    edges = np.geomspace(lo, hi, N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
    centres = np.sqrt(edges[:-1] * edges[1:]) if log else (edges[:-1] + edges[1:]) / 2
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, N_BINS - 1)
    return pd.Series(np.round(centres[index], 3), index=values.index)


def heatmap_tables(trials: pd.DataFrame, metric: str, log_axes: tuple[str, ...] = (), x: str = "leak",
                   y: str = "sub") -> dict[str, pd.DataFrame]:
    """The data behind one metric's heatmap: {panel title: y x x table}, one panel per combination of
    the other axes that vary (init_scale, lr, momentum, ...), titled by their values ("" when none varies).

    trials: one row per COMPLETE trial with a column per searched axis and `metric`. Axes in
    `log_axes` are binned on a log scale when they must be binned. A cell is the mean over the
    trials that fall in it; a cell without a trial is NaN (drawn blank).
    """
    axes = [a for a in AXIS_NAMES if a in trials]
    frame = trials.assign(**{f"{a}_axis": axis_labels(trials[a], log=a in log_axes) for a in axes})
    facets = [a for a in axes if a not in (x, y) and frame[f"{a}_axis"].nunique() > 1]
    xs, ys = sorted(frame[f"{x}_axis"].unique()), sorted(frame[f"{y}_axis"].unique())
    groups = frame.groupby([f"{a}_axis" for a in facets]) if facets else [((), frame)]
    return {
        ", ".join(f"{a} {v:g}" for a, v in zip(facets, key)):
            group.pivot_table(index=f"{y}_axis", columns=f"{x}_axis", values=metric, aggfunc="mean")
                 .reindex(index=ys, columns=xs)
        for key, group in groups
    }


def heatmap_figure(trials: pd.DataFrame, metric: str, log_axes: tuple[str, ...] = (), x: str = "leak",
                   y: str = "sub") -> Figure:
    """One metric of HEATMAP_METRICS: `x` by `y` (leak by sub unless asked), a panel per combination
    of the other axes that vary, annotated cells, the metric's fixed colour range.
    trials: as `results.trials_frame`."""
    title, cmap, (vmin, vmax) = next(m[1:] for m in HEATMAP_METRICS if m[0] == metric)
    tables = heatmap_tables(trials, metric, log_axes, x, y)
    n_y, n_x = next(iter(tables.values())).shape
    columns = min(len(tables), 4)
    rows = -(-len(tables) // columns)
    fig = Figure(figsize=(2.2 + 0.9 * n_x * columns, 1.2 + (0.6 * n_y + 0.5) * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (panel, cells) in zip(axes, tables.items()):
        _seaborn().heatmap(cells, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=True, fmt=".2f",
                           cbar=ax is axes[len(tables) - 1], cbar_kws={"label": metric}, linewidths=0.5,
                           linecolor="white", annot_kws={"fontsize": 8})
        ax.invert_yaxis()  # y grows upwards
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    for ax in axes[len(tables):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def lesson_strip_figure(seed_accs: pd.DataFrame) -> Figure | None:
    """Per-seed validation accuracy of the lesson's settings present in the study (None if none are).

    seed_accs: one row per (trial, seed) with columns leak, sub, init_scale, seed, val_acc.
    """
    keep = seed_accs[[is_lesson_setting(leak, sub) for leak, sub in zip(seed_accs["leak"], seed_accs["sub"])]]
    if keep.empty:
        return None
    keep = keep.assign(setting=[f"({l:g}, {s:g}) x{k:g}" for l, s, k in zip(keep["leak"], keep["sub"], keep["init_scale"])])
    fig = Figure(figsize=(1.6 + 1.3 * keep["setting"].nunique(), 4), layout="constrained")
    ax = fig.subplots()
    _seaborn().stripplot(keep.sort_values("setting"), x="setting", y="val_acc", ax=ax, size=7, jitter=0.15, alpha=0.8)
    ax.axhline(0.1, color="grey", linestyle=":", label="chance")
    ax.set_ylim(0, 1)
    ax.set_xlabel("(leak, sub) x init_scale")
    ax.set_ylabel("validation accuracy, one dot per seed")
    ax.set_title("The lesson's settings, seed by seed")
    ax.legend(loc="upper right")
    return fig


def log_axes(study) -> tuple[str, ...]:
    """The axes the stored study searched over log ranges."""
    space = upgrade_stored_config(study.user_attrs.get(CONFIG_ATTR, {})).get("space", {})
    return tuple(name for name, text in space.items() if text.endswith(":log"))


def study_figures(study, x: str = "leak", y: str = "sub") -> dict[str, Figure]:
    """All of a stored study's pictures, by file name: `heatmap_METRIC` for each metric (`x` by `y`;
    other axes than leak by sub name the file `heatmap_METRIC_lr_by_sub`) and
    `seed_outcomes` (which seeds fail where), and `lesson_settings_seeds` where the study holds a
    lesson setting. None before a trial is COMPLETE."""
    trials = trials_frame(study)
    if trials.empty:
        return {}
    suffix = "" if (x, y) == ("leak", "sub") else f"_{x}_by_{y}"
    figures = {f"heatmap_{metric}{suffix}": heatmap_figure(trials, metric, log_axes(study), x, y)
               for metric, *_ in HEATMAP_METRICS}
    seeds = seed_frame(study)
    figures["seed_outcomes"] = seed_outcome_figure(seeds, study_threshold(study))
    strip = lesson_strip_figure(seeds)
    return figures | ({"lesson_settings_seeds": strip} if strip is not None else {})


def signal_figure(profiles, predictions, title: str) -> Figure:
    """Signal propagation (study/experiments/signal.py): per hidden layer, measured (markers: the
    mean over seeds, bars: their range) against the mean-field prediction (lines), one colour per
    (leak, sub): activation variance (log), activation mean, the correlation of image pairs'
    pre-activations, and the gradient norm relative to the last hidden layer's."""
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    colours = _seaborn().color_palette("tab10", len(predictions))
    panels = (("var", "activation variance", True), ("mean", "activation mean", False),
              ("correlation", "correlation of two images' pre-activations", False))
    for colour, prediction in zip(colours, predictions):
        mine = [p for p in profiles if (p.leak, p.sub) == (prediction.leak, prediction.sub)]
        label = f"leak {prediction.leak:g}, sub {prediction.sub:g}"
        layers = np.arange(1, len(prediction.mean) + 1)
        for ax, (key, _, _) in zip(axes, panels):
            values = np.array([getattr(p, key) for p in mine])
            centre = values.mean(0)
            ax.errorbar(layers, centre, yerr=[centre - values.min(0), values.max(0) - centre], fmt="o",
                        markersize=3, color=colour, elinewidth=0.8, label=label)
            ax.plot(layers, getattr(prediction, key), color=colour, linewidth=1.2)
        ratios = np.array([np.array(p.grad_norm) / p.grad_norm[-1] for p in mine])
        centre = ratios.mean(0)
        axes[3].errorbar(layers, centre, yerr=[centre - ratios.min(0), ratios.max(0) - centre], fmt="o",
                         markersize=3, color=colour, elinewidth=0.8, label=label)
    for ax, (_, name, log) in zip(axes, panels):
        ax.set_title(name)
        if log:
            ax.set_yscale("log")
    axes[3].axhline(1.0, color="grey", linestyle=":", label="mean-field (init_scale 1: by construction)")
    axes[3].set_title("|dL/dz| per layer / the last hidden layer's")
    for ax in axes:
        ax.set_xlabel("hidden layer")
    axes[0].legend(fontsize=8, title="markers: measured (range over seeds)\nlines: mean-field", title_fontsize=8)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"Signal propagation at initialisation: {title}", fontsize=10)
    return fig


def edge_heatmap_figure(table: pd.DataFrame, ladder: tuple[float, ...]) -> Figure:
    """The largest stable learning rate of each setting: leak (x) by sub (y) on a log colour scale,
    one panel per value of the other axes (init_scale, momentum, ...); each cell reads `stable < first unstable`, "< lowest rung"
    when no rung was stable, "> stable" when the ladder ended first. table: `edge.edge_table`."""
    from matplotlib.colors import LogNorm

    below = ladder[0] / (ladder[1] / ladder[0])  # colour of "not stable even at the lowest rung"
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
        cells = group.pivot_table(index="sub", columns="leak", values="max_stable_lr", aggfunc="first",
                                  dropna=False).reindex(index=subs, columns=leaks)
        labels = group.set_index(["sub", "leak"]).apply(_edge_label, axis=1, ladder=ladder)
        annot = [[labels.get((s, l), "") for l in leaks] for s in subs]
        _seaborn().heatmap(cells.fillna(below), ax=ax, norm=norm, cmap="viridis", annot=np.array(annot), fmt="",
                           cbar=ax is axes[-1], cbar_kws={"label": "largest stable lr"}, linewidths=0.5,
                           linecolor="white", annot_kws={"fontsize": 7})
        ax.invert_yaxis()
        if ax is axes[-1]:
            ax.collections[0].colorbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_title(", ".join(f"{name} {value:g}" for name, value in zip(varying, values)) or fixed, fontsize=9)
        ax.set_xlabel("leak")
        ax.set_ylabel("sub")
    fig.suptitle("Largest lr that trains reliably\n(cell: stable rung < first unstable rung"
                 + (f"; {fixed}" if varying and fixed else "") + ")", fontsize=10)
    return fig


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
    columns = min(5, len(settings))
    rows = -(-len(settings) // columns)
    fig = Figure(figsize=(3.1 * columns, 2.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    for ax, setting, edge in zip(axes.flat, settings, table.to_dict("records")):
        mine = probes[(probes[list(setting)] == pd.Series(setting)).all(axis=1)].sort_values("lr")
        fraction = mine["trained"] / mine["n_seeds"]
        ax.fill_between(mine["lr"], mine["ci_low"], mine["ci_high"], color="tab:blue", alpha=0.2,
                        label="exact 95% interval")
        ax.plot(mine["lr"], fraction, "o-", color="tab:blue", ms=4, label="seeds trained (k/n)")
        for lr, k, n in zip(mine["lr"], mine["trained"], mine["n_seeds"]):
            ax.annotate(f"{k}/{n}", (lr, k / n), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6)
        if not np.isnan(edge["max_stable_lr"]):
            ax.axvline(edge["max_stable_lr"], color="tab:green", linestyle="--", linewidth=1)
        accuracy = ax.twinx()
        accuracy.plot(mine["lr"], mine["trained_acc_mean"], "s", color="tab:orange", ms=4,
                      label="val acc of trained seeds (right)")
        accuracy.set_ylim(0.5, 1.0)
        accuracy.tick_params(labelsize=7, colors="tab:orange")
        ax.set_xscale("log")
        ax.set_xticks(rungs, [f"{lr:.3g}" for lr in rungs], rotation=60, fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.05, 1.12)
        ax.set_title(", ".join(f"{name} {setting[name]:g}" for name in ("leak", "sub", *varying)), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    handles = [h for ax in (axes.flat[0], accuracy) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8)
    fig.supxlabel("learning rate (the probed rungs; dashed: the largest stable one)", fontsize=9)
    fig.supylabel("fraction of seeds trained", fontsize=9)
    return fig


def edge_figures(table: pd.DataFrame, probes: pd.DataFrame, ladder: tuple[float, ...]) -> dict[str, Figure]:
    """An edge study's two pictures by file name: the largest stable rate per setting, and each
    setting's share of trained seeds along the ladder. table: `edge_table`; probes: `probe_frame`."""
    return {"edge_heatmap": edge_heatmap_figure(table, ladder), "edge_curves": edge_curves_figure(probes, table)}


def sharpness_figure(edges: pd.DataFrame, init: pd.DataFrame, along: pd.DataFrame, step: float,
                     momentum: float) -> Figure:
    """Left: per setting, the stability bound 2 (1 + momentum) / lambda_max at initialisation (median
    and range over seeds) against the measured edge interval (the largest stable rung to the first
    unstable one), log-log, with the diagonal. Right: lambda_max along the first steps, per seed.
    edges: `results.edge_table`; init: leak, sub, seed, lambda_max; along: leak, sub, seed, step, lambda_max."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for r in edges.to_dict("records"):
        values = init[(init["leak"] == r["leak"]) & (init["sub"] == r["sub"])]["lambda_max"]
        bounds = 2 * (1 + momentum) / values
        low = r["max_stable_lr"] if not np.isnan(r["max_stable_lr"]) else r["first_unstable_lr"] / step
        high = r["first_unstable_lr"] if not np.isnan(r["first_unstable_lr"]) else r["max_stable_lr"] * step
        centre = np.sqrt(low * high)
        left.errorbar(centre, bounds.median(), xerr=[[centre - low], [high - centre]],
                      yerr=[[bounds.median() - bounds.min()], [bounds.max() - bounds.median()]], fmt="o", ms=4,
                      color="tab:red" if r["sub"] > 0 else "tab:blue", elinewidth=0.8)
        left.annotate(f"({r['leak']:g}, {r['sub']:g})", (centre, bounds.median()), textcoords="offset points",
                      xytext=(4, 3), fontsize=6)
    span = [min(left.get_xlim()[0], left.get_ylim()[0]), max(left.get_xlim()[1], left.get_ylim()[1])]
    left.plot(span, span, color="grey", linestyle=":", label="bound = edge")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("measured edge: largest stable lr to first unstable lr")
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


def seed_outcome_figure(seeds: pd.DataFrame, threshold: float) -> Figure:
    """Which seeds fail where: rows seeds, columns settings (most seeds trained first); a cell is
    trained, below the threshold, or diverged with the step it diverged at. seeds: `results.seed_frame`."""
    from matplotlib.colors import ListedColormap

    axes = [a for a in AXIS_NAMES if a in seeds and seeds[a].nunique() > 1] or ["leak", "sub"]
    outcome = np.where(seeds["val_acc"] > threshold, 2, np.where(seeds["diverged"], 0, 1))
    frame = seeds.assign(outcome=outcome, setting=[", ".join(f"{a} {r[a]:g}" for a in axes)
                                                   for r in seeds.to_dict("records")])
    order = frame.groupby("setting")["outcome"].apply(lambda o: (o == 2).mean()).sort_values(ascending=False).index
    grid = frame.pivot_table(index="seed", columns="setting", values="outcome", aggfunc="first").reindex(columns=order)
    steps = frame.pivot_table(index="seed", columns="setting", values="diverged_step", aggfunc="first") \
        .reindex(index=grid.index, columns=order)
    fig = Figure(figsize=(2.5 + 0.45 * len(order), 2.0 + 0.32 * len(grid)), layout="constrained")
    ax = fig.subplots()
    cmap = ListedColormap(["tab:red", "tab:orange", "tab:green"])
    ax.imshow(grid.to_numpy(dtype=float), cmap=cmap, vmin=-0.5, vmax=2.5, aspect="auto", interpolation="nearest")
    for (row, column), step in np.ndenumerate(steps.to_numpy(dtype=float)):
        if not np.isnan(step):
            ax.text(column, row, f"{step:.0f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(len(order)), order, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(grid)), [str(s) for s in grid.index], fontsize=7)
    ax.set_ylabel("seed")
    handles = [ax.scatter([], [], color=c, marker="s", label=label) for c, label in
               zip(("tab:green", "tab:orange", "tab:red"),
                   ("trained", f"val acc <= {threshold:g}", "diverged (at the step shown)"))]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8)
    return fig
