"""Signal propagation through depth at initialisation: the experiments the theory of init rests on.

A deep MLP (default 50 hidden layers of width 256, GeneralRelu(leak, sub) after each) sees one batch
of real FashionMNIST images, untrained. For each initialisation we record every hidden layer's
activation mean and std and the singular values of its (centred) activation matrix:

- "default": PyTorch's own nn.Linear init (uniform, std 1/sqrt(3 fan_in), biases uniform);
- "lecun": normal with std 1/sqrt(fan_in), biases zero: a ReLU halves the variance every layer;
- "kaiming": normal with gain sqrt(2 / (1 + leak^2)) / sqrt(fan_in) (a=leak), times init_scale;
- "lsuv": Kaiming, then layer by layer rescaled on the batch to unit std (study.model.lsuv).

And a sweep over init_scale x leak of the last layer's std under Kaiming: the ridge where
activations neither vanish nor explode sits at init_scale 1.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from study.config import ModelConfig
from study.model import activations, build_model, init_weights, weighted_layers
from study.plots import depth_figures, save_figures
from study.stats import StatsRecorder

DEPTH_INITS = ("default", "lecun", "kaiming", "lsuv")  # compared through depth; training uses config.INITS


@dataclass
class DepthProfile:
    """One initialisation, one seed: per hidden layer (input side first)."""

    init: str
    seed: int
    mean: list[float]
    std: list[float]
    singular_values: list[list[float]]  # per layer, descending, divided by the largest
    effective_rank: list[float]  # exp(entropy of the normalised squared singular values)


def deep_mlp(depth: int, width: int, leak: float, sub: float, init: str, init_scale: float,
             seed: int, batch: torch.Tensor) -> nn.Sequential:
    """The untrained deep MLP under `init` (see the module docstring)."""
    config = ModelConfig(model="mlp", widths=(width,) * depth, leak=leak, sub=sub,
                         init="lsuv" if init == "lsuv" else "kaiming", init_scale=init_scale)
    torch.manual_seed(seed)  # PyTorch's default init draws from the global generator
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    if init in ("kaiming", "lsuv"):
        init_weights(model, config, generator, batch=batch)
    elif init == "lecun":
        with torch.no_grad():
            for layer in weighted_layers(model):
                nn.init.normal_(layer.weight, std=1 / math.sqrt(layer.in_features), generator=generator)
                nn.init.zeros_(layer.bias)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}: one of {', '.join(DEPTH_INITS)}")
    return model


def profile(model: nn.Sequential, batch: torch.Tensor, init: str, seed: int) -> DepthProfile:
    """Every hidden activation's mean, std and spectrum on `batch`."""
    outputs: list[torch.Tensor] = []
    hooks = [act.register_forward_hook(lambda m, i, out: outputs.append(out.detach().double()))
             for act in activations(model)]
    try:
        with torch.no_grad(), StatsRecorder(activations(model)) as recorder:
            recorder.recording = True
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    history = recorder.history()
    spectra, ranks = [], []
    for out in outputs:
        centred = out - out.mean(0)
        s = torch.linalg.svdvals(centred)
        top = s[0].item()
        normalised = (s / top) if top > 0 and math.isfinite(top) else torch.zeros_like(s)
        spectra.append(normalised.tolist())
        p = s ** 2 / (s ** 2).sum() if top > 0 and math.isfinite(top) else None
        ranks.append(math.exp(-(p[p > 0] * p[p > 0].log()).sum().item()) if p is not None else 0.0)
    return DepthProfile(init, seed, [h.mean[0] for h in history], [h.std[0] for h in history], spectra, ranks)


def std_sweep(batch: torch.Tensor, depth: int, width: int, sub: float, scales: list[float],
              leaks: list[float], seed: int = 0, progress: bool = False) -> np.ndarray:
    """log10 of the last hidden layer's std under Kaiming, (len(scales), len(leaks))."""
    grid = np.zeros((len(scales), len(leaks)))
    cells = [(i, j) for i in range(len(scales)) for j in range(len(leaks))]
    for i, j in tqdm(cells, desc="init_scale x leak", disable=not progress, leave=False):
        model = deep_mlp(depth, width, leaks[j], sub, "kaiming", scales[i], seed, batch)
        std = profile_std(model, batch)
        grid[i, j] = math.log10(std) if std > 0 and math.isfinite(std) else float("nan")
    return grid


def profile_std(model: nn.Sequential, batch: torch.Tensor) -> float:
    last = activations(model)[-1]
    captured = {}
    hook = last.register_forward_hook(lambda m, i, out: captured.__setitem__("out", out))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        hook.remove()
    return captured["out"].double().std().item()


def run_depth(batch: torch.Tensor, out_dir: Path, depth: int = 50, width: int = 256, leak: float = 0.0,
              sub: float = 0.0, init_scale: float = 1.0, seeds: tuple[int, ...] = (0, 1, 2),
              progress: bool = False) -> tuple[list[DepthProfile], dict[str, Path]]:
    """All three experiments; PNGs with their numbers as CSV in out_dir. Returns the profiles and
    {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(init, seed) for init in DEPTH_INITS for seed in seeds]
    profiles = [profile(deep_mlp(depth, width, leak, sub, init, init_scale, seed, batch), batch, init, seed)
                for init, seed in tqdm(runs, desc="depth profiles", disable=not progress, leave=False)]
    scales = [float(s) for s in np.round(np.geomspace(0.5, 2.0, 9), 3)]
    leaks = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
    sweep = std_sweep(batch, depth, width, sub, scales, leaks, seed=seeds[0], progress=progress)

    paths = {"profile_csv": out_dir / "depth_profile.csv", "sweep_csv": out_dir / "depth_std_sweep.csv"}
    with open(paths["profile_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["init", "seed", "layer", "mean", "std", "effective_rank"])
        for p in profiles:
            for layer, (m, s, r) in enumerate(zip(p.mean, p.std, p.effective_rank), start=1):
                writer.writerow([p.init, p.seed, layer, m, s, r])
    with open(paths["sweep_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["init_scale", *[f"leak={l:g}" for l in leaks]])
        for scale, row in zip(scales, sweep):
            writer.writerow([scale, *row])
    title = f"{depth} layers of width {width}, GeneralRelu(leak={leak:g}, sub={sub:g}), init_scale {init_scale:g}"
    figures = depth_figures(profiles, sweep, scales, leaks, title)
    paths.update(zip(figures, save_figures(figures, out_dir)))
    return profiles, paths


def last_to_first_std(profiles: list[DepthProfile], init: str) -> float:
    """The seed-averaged ratio std(last hidden layer) / std(first hidden layer) for `init`."""
    ratios = [p.std[-1] / p.std[0] for p in profiles if p.init == init]
    return float(np.mean(ratios))
