"""Signal propagation at initialisation with GeneralRelu(leak, sub): measured in float64 against the
mean-field prediction.

An MLP of `depth` hidden layers of `width` units (Kaiming x init_scale weights, biases as
`bias_init`) sees one batch of real FashionMNIST images, untrained; its parameters and every
operation from the (float32-stored) input on are float64. Per hidden layer we measure the
activation's mean and variance (over units and images), the correlation of the pre-activations of
pairs of images, and the norm of the loss gradient with respect to the pre-activations.

The mean-field prediction (infinite width, weights independent of the inputs). Write
f(z) = leaky_relu(z, leak), a = f(z) - sub, g^2 = init_scale^2 * 2 / (1 + leak^2) (Kaiming's gain),
b = 1 / (3 fan_in) the variance of PyTorch's default bias (0 for zero biases). For a pre-activation
z ~ N(0, q):
    E[a]   = (1 - leak) sqrt(q / 2 pi) - sub
    E[a^2] = (1 + leak^2) q / 2 - 2 sub (1 - leak) sqrt(q / 2 pi) + sub^2
and the next layer's pre-activation variance is q' = g^2 E[a^2] + b. The first layer's is
q_1 = g^2 mean(x^2) + b per image x. For two images with pre-activation covariance q12 and
correlation c = q12 / sqrt(q1 q2) = cos(theta) (Cho & Saul's arc-cosine kernel for the ReLU part):
    E[f1 f2] = (1 - leak)^2 sqrt(q1 q2) (sin theta + (pi - theta) c) / (2 pi) + leak q12
    E[a1 a2] = E[f1 f2] - sub (E[f1] + E[f2]) + sub^2,    q12' = g^2 E[a1 a2] + b.
Backward (width constant, the gradient-independence assumption), the pre-activation gradient's
variance is multiplied per layer towards the input by chi = g^2 E[f'(z)^2] = g^2 (1 + leak^2) / 2
= init_scale^2, for every leak and sub.

Relations that hold by construction (labelled here, never reported as findings):
- With sub = 0 and init_scale 1, q' = q: Kaiming's gain is chosen to make it so.
- chi = init_scale^2 whatever leak and sub: f' does not see sub, and the gain is chosen for leak.
- Seed s draws the same standard normals for every setting (the weights differ by the gain only):
  settings are paired on seeds.
With sub > 0 and init_scale 1 the map q -> q' has the fixed point q* = pi sub^2 / (2 (1 - leak)^2)
(zero biases), where E[a] = -sub / 2: derived from the formulas above, and tested by measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from study import interrupts
from study.activations import GENERAL_RELU
from study.config import ModelConfig
from study.model import activations, build_model, init_weights, weighted_layers

SIGNAL_SETTINGS = ((0.0, 0.0), (0.1, 0.4), (0.2, 0.4), (0.5, 0.7), (0.05, 0.9))  # ReLU and the lesson's
PAIRS = 64  # image pairs whose correlation is followed


@dataclass(frozen=True)
class SignalNet:
    """The network of one measurement."""

    depth: int = 30
    width: int = 512
    init_scale: float = 1.0
    bias_init: str = "default"


@dataclass
class SignalProfile:
    """One setting, one seed: per hidden layer, input side first."""

    leak: float
    sub: float
    seed: int
    mean: list[float]  # of the activations a, over units and images
    var: list[float]  # population variance of a over units and images
    correlation: list[float]  # mean over PAIRS image pairs of cos(z_i, z_j), over units
    grad_norm: list[float]  # ||dL/dz|| of the layer's pre-activations (L: mean cross-entropy)


@dataclass
class SignalPrediction:
    """The mean-field values for the same images and network, per hidden layer."""

    leak: float
    sub: float
    mean: list[float]
    var: list[float]
    correlation: list[float]


def fixed_point_variance(leak: float, sub: float) -> float:
    """q* of the pre-activation variance for sub > 0, init_scale 1, zero biases (see the docstring)."""
    return math.pi * sub ** 2 / (2 * (1 - leak) ** 2)


def predict(x: torch.Tensor, leak: float, sub: float, net: SignalNet) -> SignalPrediction:
    """The mean-field profile for images x (N, 1, 28, 28) through `net`."""
    images = x.reshape(len(x), -1).double().numpy()
    gain2 = (net.init_scale * GENERAL_RELU.gain(leak)) ** 2

    def bias_var(fan_in: int) -> float:
        return 1 / (3 * fan_in) if net.bias_init == "default" else 0.0

    first, second = _pairs(len(images))
    q = gain2 * (images ** 2).mean(1) + bias_var(images.shape[1])  # (N,)
    q12 = gain2 * (images[first] * images[second]).mean(1) + bias_var(images.shape[1])  # (PAIRS,)
    means, variances, correlations = [], [], []
    for _ in range(net.depth):
        mean, square = GENERAL_RELU.moments(q, leak, sub)
        means.append(float(mean.mean()))
        variances.append(float(square.mean() - mean.mean() ** 2))
        correlations.append(float((q12 / np.sqrt(q[first] * q[second])).mean()))
        q12 = gain2 * GENERAL_RELU.pair_moment(q[first], q[second], q12, leak, sub) + bias_var(net.width)
        q = gain2 * square + bias_var(net.width)
    return SignalPrediction(leak, sub, means, variances, correlations)


def measure(x: torch.Tensor, y: torch.Tensor, leak: float, sub: float, seed: int, net: SignalNet) -> SignalProfile:
    """The float64 network of `seed` on images x (N, 1, 28, 28) with labels y (N,)."""
    interrupts.check()
    config = ModelConfig(model="mlp", widths=(net.width,) * net.depth, leak=leak, sub=sub,
                         init_scale=net.init_scale, bias_init=net.bias_init)
    model = build_model(config).double()
    init_weights(model, config, torch.Generator().manual_seed(seed))  # draws float64 numbers
    layers = weighted_layers(model)
    first, second = _pairs(len(x))
    h = x.reshape(len(x), -1).double()
    pre, acts = [], []
    for layer, act in zip(layers[:-1], activations(model)):
        z = layer(h)
        z.retain_grad()
        h = act(z)
        pre.append(z)
        acts.append(h.detach())
    F.cross_entropy(layers[-1](h), y).backward()
    unit = [z.detach() / z.detach().norm(dim=1, keepdim=True) for z in pre]
    return SignalProfile(
        leak, sub, seed,
        mean=[a.mean().item() for a in acts],
        var=[a.var(unbiased=False).item() for a in acts],
        correlation=[(u[first] * u[second]).sum(1).mean().item() for u in unit],
        grad_norm=[z.grad.norm().item() for z in pre],
    )


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """PAIRS disjoint image pairs (0, 1), (2, 3), ... (fewer for small batches)."""
    count = min(PAIRS, n // 2)
    return np.arange(0, 2 * count, 2), np.arange(1, 2 * count, 2)


def run_signal(x: torch.Tensor, y: torch.Tensor, settings=SIGNAL_SETTINGS, seeds: tuple[int, ...] = (0, 1, 2),
               net: SignalNet = SignalNet(), progress: bool = False) -> tuple[list[SignalProfile], list[SignalPrediction]]:
    """Measure every setting with every seed on the images x (labels y), and predict it."""
    runs = [(leak, sub, seed) for leak, sub in settings for seed in seeds]
    profiles = [measure(x, y, leak, sub, seed, net)
                for leak, sub, seed in tqdm(runs, desc="signal propagation", disable=not progress, leave=False)]
    predictions = [predict(x, leak, sub, net) for leak, sub in settings]
    return profiles, predictions


def signal_frame(profiles: list[SignalProfile], predictions: list[SignalPrediction]) -> pd.DataFrame:
    """One row per (leak, sub, seed, layer from 1): mean, var, correlation, grad_norm; the
    predictions' rows have seed "mean-field" and no grad_norm."""
    rows = [{"leak": p.leak, "sub": p.sub, "seed": p.seed, "layer": layer, "mean": mean, "var": var,
             "correlation": correlation, "grad_norm": grad_norm}
            for p in profiles
            for layer, (mean, var, correlation, grad_norm) in enumerate(zip(p.mean, p.var, p.correlation, p.grad_norm),
                                                                        start=1)]
    rows += [{"leak": p.leak, "sub": p.sub, "seed": "mean-field", "layer": layer, "mean": mean, "var": var,
              "correlation": correlation, "grad_norm": None}
             for p in predictions for layer, (mean, var, correlation) in enumerate(zip(p.mean, p.var, p.correlation),
                                                                                   start=1)]
    return pd.DataFrame(rows, columns=["leak", "sub", "seed", "layer", "mean", "var", "correlation", "grad_norm"])


def save_signal(frame: pd.DataFrame, profiles: list[SignalProfile], predictions: list[SignalPrediction],
                net: SignalNet, seeds: tuple[int, ...], images: int, out_dir: Path) -> dict[str, Path]:
    """signal.csv (`signal_frame`) and signal.png in out_dir; their paths by name. images: how
    many the measurement saw (for the title)."""
    from study.plots import save_figures, signal_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"signal_csv": out_dir / "signal.csv"}
    frame.to_csv(paths["signal_csv"], index=False)
    title = (f"{net.depth} layers of width {net.width}, init_scale {net.init_scale:g}, {net.bias_init} biases, "
             f"float64, {images} FashionMNIST images, seeds {','.join(map(str, seeds))}")
    figures = {"signal": signal_figure(profiles, predictions, title)}
    paths.update(zip(figures, save_figures(figures, out_dir)))
    return paths


def agreement(profiles: list[SignalProfile], prediction: SignalPrediction) -> dict[str, float]:
    """For one setting, over layers and seeds: `agreement_frame`'s three errors."""
    mine = [p for p in profiles if (p.leak, p.sub) == (prediction.leak, prediction.sub)]
    row = agreement_frame(signal_frame(mine, [prediction])).iloc[0]
    return {key: float(row[key]) for key in ("var_rel_error", "mean_abs_error", "correlation_abs_error")}


def agreement_text(frame: pd.DataFrame) -> str:
    """`agreement_frame` for people: per setting, the last layer measured against mean-field and
    the largest errors. frame: `signal_frame`."""
    measured = frame[frame["seed"] != "mean-field"]
    seeds = ",".join(str(s) for s in sorted(measured["seed"].unique()))
    lines = [f"layer {measured['layer'].max()}: measured (mean over seeds {seeds}) / mean-field; "
             "largest error over layers and seeds"]
    for r in agreement_frame(frame).to_dict("records"):
        lines.append(f"  leak {r['leak']:g}, sub {r['sub']:g}: var {r['var']:.4g} / {r['var_predicted']:.4g}, "
                     f"mean {r['mean']:.3f} / {r['mean_predicted']:.3f}, "
                     f"correlation {r['correlation']:.3f} / {r['correlation_predicted']:.3f}"
                     f"   (var {r['var_rel_error']:.0%}, mean {r['mean_abs_error']:.3f}, "
                     f"correlation {r['correlation_abs_error']:.3f})")
    return "\n".join(lines)


def agreement_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (leak, sub) of a `signal_frame`: the last layer's var, mean and correlation
    (measured, mean over seeds) and their mean-field values (`*_predicted`); over layers and seeds,
    the largest relative error of the measured variance and the largest absolute errors of the mean
    and of the correlation (var_rel_error, mean_abs_error, correlation_abs_error)."""
    predicted = frame[frame["seed"] == "mean-field"].set_index(["leak", "sub", "layer"])
    rows = []
    for (leak, sub), group in frame[frame["seed"] != "mean-field"].groupby(["leak", "sub"], sort=False):
        mine = predicted.loc[(leak, sub)]
        aligned = mine.reindex(group["layer"])
        last = group[group["layer"] == group["layer"].max()]
        rows.append({
            "leak": leak, "sub": sub,
            **{key: float(last[key].mean()) for key in ("var", "mean", "correlation")},
            **{f"{key}_predicted": float(mine[key].iloc[-1]) for key in ("var", "mean", "correlation")},
            "var_rel_error": float(np.max(np.abs(group["var"].to_numpy() / aligned["var"].to_numpy() - 1))),
            "mean_abs_error": float(np.max(np.abs(group["mean"].to_numpy() - aligned["mean"].to_numpy()))),
            "correlation_abs_error": float(np.max(np.abs(group["correlation"].to_numpy()
                                                         - aligned["correlation"].to_numpy()))),
        })
    return pd.DataFrame(rows)
