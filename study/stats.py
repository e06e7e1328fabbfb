"""Activation statistics: the PyTorch reference of what the fused kernel computes, and the recorder.

Per layer and recorded step, from the activation `a = GeneralRelu(z)` and its pre-activation `z`:
- `sum`, `sumsq` of a (for mean and std), `count` of elements;
- `hist`: counts of |a| in `bins` equal bins over [0, hist_max], exactly as
  `torch.histc(a.abs(), bins, 0, hist_max)` counts them (values above hist_max are not counted);
- `unit_pos`: per output unit (feature of a linear layer, channel of a convolution), the number of
  rows (batch x positions) whose pre-activation is > 0. A unit with 0 is dead on that batch.

Summaries: mean, std (unbiased), `near_zero_frac` = share of |a| in the lowest bin (the fast.ai
lesson's "dead" chart: with sub > 0 an off unit outputs -sub and lands in a higher bin, so this is
"near zero", not "off"), and `dead_units` = units never positive on the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

HIST_BINS = 40  # the lesson's histc(40, 0, 10)
HIST_MAX = 10.0


@dataclass
class ActivationStats:
    """One layer at one step. hist: (bins,) float32 counts; unit_pos: (units,) int64."""

    sum: torch.Tensor
    sumsq: torch.Tensor
    count: int
    hist: torch.Tensor
    unit_pos: torch.Tensor

    @property
    def mean(self) -> float:
        return self.sum.item() / self.count

    @property
    def std(self) -> float:
        n = self.count
        var = (self.sumsq.item() - self.sum.item() ** 2 / n) / max(n - 1, 1)
        return math.sqrt(max(var, 0.0))

    @property
    def near_zero_frac(self) -> float:
        return self.hist[0].item() / self.count

    @property
    def dead_units(self) -> int:
        return int((self.unit_pos == 0).sum())


def activation_stats(pre: torch.Tensor, act: torch.Tensor, bins: int = HIST_BINS,
                     hist_max: float = HIST_MAX) -> ActivationStats:
    """Statistics of one layer's output.

    pre, act: (B, N) for a linear layer or (B, C, H, W) for a convolution; units are dim 1.
    Sums are accumulated in float64 when the input is float64, else in float32.
    """
    acc = torch.float64 if act.dtype == torch.float64 else torch.float32
    a = act.detach().to(acc)
    row_dims = [d for d in range(pre.dim()) if d != 1]  # batch, and positions of a convolution
    return ActivationStats(
        sum=a.sum(),
        sumsq=(a * a).sum(),
        count=a.numel(),
        hist=torch.histc(a.abs(), bins, 0, hist_max),
        unit_pos=(pre.detach() > 0).sum(dim=row_dims),
    )


@dataclass
class LayerHistory:
    """One layer's statistics over the recorded steps; every list has one entry per step."""

    steps: list[int]
    mean: list[float]
    std: list[float]
    near_zero_frac: list[float]
    dead_units: list[int]
    hist: list[list[float]]  # (steps, bins)
    units: int

    def final(self) -> dict:
        """The last recorded step: what a run reports as its layer's state at the end of training."""
        return {
            "mean": self.mean[-1], "std": self.std[-1], "dead_frac": self.near_zero_frac[-1],
            "dead_units": self.dead_units[-1], "units": self.units,
        }


class StatsRecorder:
    """Forward hooks on a model's activation modules that keep `ActivationStats` of chosen steps.

    Use as a context manager (the hooks are removed on exit, also on error); set `recording` before
    each forward pass to say whether that pass is recorded.
    """

    def __init__(self, modules: list[nn.Module], bins: int = HIST_BINS, hist_max: float = HIST_MAX):
        self.modules, self.bins, self.hist_max = modules, bins, hist_max
        self.recording = False
        self.step = 0
        self.records: list[list[tuple[int, ActivationStats]]] = [[] for _ in modules]
        self._handles: list = []

    def __enter__(self) -> "StatsRecorder":
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def hook(module, inputs, output):
            if self.recording:
                kernel = getattr(module, "last_stats", None)  # a fused layer reduced them already
                if kernel is not None:
                    stats = ActivationStats(kernel.sum, kernel.sumsq, kernel.count, kernel.hist, kernel.unit_pos)
                else:
                    with torch.no_grad():
                        stats = activation_stats(inputs[0], output, self.bins, self.hist_max)
                self.records[index].append((self.step, stats))
        return hook

    def history(self) -> list[LayerHistory]:
        layers = []
        for records in self.records:
            steps = [step for step, _ in records]
            stats = [s for _, s in records]
            layers.append(LayerHistory(
                steps=steps,
                mean=[s.mean for s in stats],
                std=[s.std for s in stats],
                near_zero_frac=[s.near_zero_frac for s in stats],
                dead_units=[s.dead_units for s in stats],
                hist=torch.stack([s.hist for s in stats]).tolist() if stats else [],
                units=len(stats[0].unit_pos) if stats else 0,
            ))
        return layers

