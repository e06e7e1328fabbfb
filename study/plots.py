"""Pictures: one run's activation statistics (the lesson's charts), a study's heatmaps, the depth
experiments' profiles; an edge search's are in `study.edge_plots`.

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

from study import interrupts
from study.axes import NAMES as AXIS_NAMES
from study.records import is_trained, stored_config, study_threshold
from study.results import is_lesson_setting, seed_frame, trials_frame
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


def lazy_seaborn():
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
    # Fixed margins: constrained layout took half of the drawing time, and a study may draw one per run.
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
        lazy_seaborn().heatmap(cells, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=True, fmt=".2f",
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
    lazy_seaborn().stripplot(keep.sort_values("setting"), x="setting", y="val_acc", ax=ax, size=7, jitter=0.15, alpha=0.8)
    ax.axhline(0.1, color="grey", linestyle=":", label="chance")
    ax.set_ylim(0, 1)
    ax.set_xlabel("(leak, sub) x init_scale")
    ax.set_ylabel("validation accuracy, one dot per seed")
    ax.set_title("The lesson's settings, seed by seed")
    ax.legend(loc="upper right")
    return fig


def log_axes(study) -> tuple[str, ...]:
    """The axes the stored study searched over log ranges."""
    space = stored_config(study).get("space", {})
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
    colours = lazy_seaborn().color_palette("tab10", len(predictions))
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


def seed_outcome_figure(seeds: pd.DataFrame, threshold: float) -> Figure:
    """Which seeds fail where: rows seeds, columns settings (most seeds trained first); a cell is
    trained, below the threshold, or diverged with the step it diverged at. seeds: `results.seed_frame`."""
    from matplotlib.colors import ListedColormap

    axes = [a for a in AXIS_NAMES if a in seeds and seeds[a].nunique() > 1] or ["leak", "sub"]
    outcome = np.where(is_trained(seeds["val_acc"], threshold), 2, np.where(seeds["diverged"], 0, 1))
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
