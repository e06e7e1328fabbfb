"""The pictures: the data behind each figure, and the figures' panels, from small frames made here."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from study.plots import (HEATMAP_METRICS, activation_figure, heatmap_figure, heatmap_tables, lesson_strip_figure,
                         save_figures)
from study.stats import HIST_BINS, LayerHistory


def trials(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"init_scale": rng.uniform(0.5, 2, n), "leak": rng.uniform(0, 0.5, n),
                         "sub": rng.uniform(0, 0.9, n), **{m: rng.uniform(0, 1, n) for m, *_ in HEATMAP_METRICS}})


def test_heatmap_leaves_cells_without_trials_blank():
    trials = pd.DataFrame({"init_scale": [1.0, 1.0, 2.0], "leak": [0.0, 0.1, 0.1], "sub": [0.0, 0.4, 0.0],
                           "mean_val_acc": [0.8, 0.7, 0.6]})
    tables = heatmap_tables(trials, "mean_val_acc")
    assert np.isnan(tables["init_scale 1"].loc[0.0, 0.1])  # no trial at (leak .1, sub 0)
    assert tables["init_scale 2"].loc[0.0, 0.1] == 0.6
    assert np.isnan(tables["init_scale 2"].loc[0.4, 0.0])


def test_every_other_axis_that_varies_gets_panels_and_any_two_axes_can_be_drawn():
    grid = pd.DataFrame([dict(init_scale=1.0, leak=leak, sub=sub, lr=lr, momentum=m, mean_val_acc=leak + sub + lr + m)
                         for leak in (0, 0.1) for sub in (0, 0.4) for lr in (0.1, 0.2, 0.4) for m in (0.5, 0.9)])
    tables = heatmap_tables(grid, "mean_val_acc")
    assert list(tables) == [f"lr {lr:g}, momentum {m:g}" for lr in (0.1, 0.2, 0.4) for m in (0.5, 0.9)]
    assert tables["lr 0.2, momentum 0.9"].loc[0.4, 0.1] == pytest.approx(0.1 + 0.4 + 0.2 + 0.9)
    by_lr = heatmap_tables(grid, "mean_val_acc", x="lr", y="sub")
    assert list(by_lr) == [f"leak {leak:g}, momentum {m:g}" for leak in (0, 0.1) for m in (0.5, 0.9)]
    assert list(by_lr["leak 0, momentum 0.5"].columns) == [0.1, 0.2, 0.4]
    fig = heatmap_figure(grid, "mean_val_acc", x="lr", y="sub")
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_title()] == ["lr"] * 4


def test_range_samplers_are_binned_on_the_heatmap_axes():
    rng = np.random.default_rng(0)
    trials = pd.DataFrame({"init_scale": rng.uniform(0.5, 2, 40), "leak": rng.uniform(0, 0.5, 40),
                           "sub": rng.uniform(0, 0.9, 40), "mean_val_acc": rng.uniform(0.1, 0.9, 40)})
    tables = heatmap_tables(trials, "mean_val_acc")
    assert len(tables) == 5
    assert all(t.shape[0] <= 5 and t.shape[1] <= 5 for t in tables.values())



@pytest.mark.parametrize("metric", [m for m, *_ in HEATMAP_METRICS])
def test_a_heatmap_has_a_panel_per_init_scale_with_the_metrics_fixed_range(metric):
    grid = pd.DataFrame({"init_scale": [1.0, 1.0, 2.0, 2.0], "leak": [0.0, 0.1, 0.0, 0.1], "sub": [0.4] * 4,
                         metric: [0.2, 0.4, 0.6, 0.8]})
    fig = heatmap_figure(grid, metric)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["init_scale 1", "init_scale 2"]
    _, _, (vmin, vmax) = next(m[1:] for m in HEATMAP_METRICS if m[0] == metric)
    assert panels[0].collections[0].get_clim() == (vmin, vmax)
    # The annotated numbers are the cells' values.
    assert [t.get_text() for t in panels[1].texts] == ["0.60", "0.80"]


def test_the_lesson_strip_shows_only_the_lessons_settings_one_dot_per_seed():
    seeds = pd.DataFrame({"init_scale": 1.0, "leak": [0.1, 0.1, 0.3, 0.0], "sub": [0.4, 0.4, 0.4, 0.0],
                          "seed": [0, 1, 0, 0], "val_acc": [0.8, 0.1, 0.7, 0.75]})
    fig = lesson_strip_figure(seeds)
    dots = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert sorted(dots[:, 1]) == [0.1, 0.75, 0.8]  # (0.3, 0.4) is not a lesson setting
    assert lesson_strip_figure(seeds[seeds["leak"] == 0.3]) is None


def test_the_activation_figure_has_the_lessons_panels_per_layer(tmp_path):
    steps = [0, 1, 2]
    history = [LayerHistory(steps=steps, mean=[0.1] * 3, std=[1.0] * 3, near_zero_frac=[0.5] * 3,
                            hist=[[1] * HIST_BINS] * 3, dead_units=[0] * 3, units=8) for _ in range(2)]
    fig = activation_figure(history, "two layers")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("layer 1: log1p histogram of |a|") == 1 and titles.count("layer 2: log1p histogram of |a|") == 1
    assert len(fig.axes) == 3 + len(history)  # mean, std, near-zero, one histogram image per layer
    (path,) = save_figures({"activations": fig}, tmp_path)
    assert path.name == "activations.png" and path.stat().st_size > 5000
