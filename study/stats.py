"""Activation statistics: the PyTorch reference of what the fused kernel computes, and the recorder.

Per layer and recorded step, from the activation `a = GeneralRelu(z)` and its pre-activation `z`:
- `sum`, `sumsq` of a (for mean and std), `count` of elements;
- `hist`: counts of |a| in `bins` equal bins over [0, hist_max], exactly as
  `torch.histc(a.abs(), bins, 0, hist_max)` counts them (values above hist_max are not counted);
- `unit_pos`: per output unit (feature of a linear layer, channel of a convolution), the number of
  rows (batch x positions) whose pre-activation is > 0. A unit with 0 is dead on that batch.

`activation_stats` is the plain reference; `batched_stats` computes the same numbers for G models at
once in few passes (one `bincount` gives every model's histogram and every unit's positive count),
which is what training records.

Summaries: mean, std (unbiased), `near_zero_frac` = share of |a| in the lowest bin (the fast.ai
lesson's "dead" chart: with sub > 0 an off unit outputs -sub and lands in a higher bin, so this is
"near zero", not "off"), and `dead_units` = units never positive on the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kernels.activation_stats_cpu import layer_stats

HIST_BINS = 40  # the lesson's histc(40, 0, 10)
HIST_MAX = 10.0
CHUNK_ELEMENTS = 1 << 18  # a chunk's five scratch tensors, 1 MB each in float32, stay in the cache


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
    """Statistics of one layer's output, the reference: sums in float64 whatever the input.

    pre, act: (B, N) for a linear layer or (B, C, H, W) for a convolution; units are dim 1.
    """
    a = act.detach().double()
    row_dims = [d for d in range(pre.dim()) if d != 1]  # batch, and positions of a convolution
    return ActivationStats(
        sum=a.sum(),
        sumsq=(a * a).sum(),
        count=a.numel(),
        hist=torch.histc(a.abs(), bins, 0, hist_max),
        unit_pos=(pre.detach() > 0).sum(dim=row_dims),
    )


@dataclass
class BatchedStats:
    """One layer of G models at one step. sum, sumsq: (G,) float64; hist: (G, bins) float32 counts;
    unit_pos: (G, units) int64; count: elements per model."""

    sum: torch.Tensor
    sumsq: torch.Tensor
    count: int
    hist: torch.Tensor
    unit_pos: torch.Tensor

    def member(self, index: int) -> ActivationStats:
        return ActivationStats(self.sum[index], self.sumsq[index], self.count, self.hist[index],
                               self.unit_pos[index])

    def summaries(self) -> dict[str, list]:
        """Per model: mean, std (unbiased), near_zero_frac, dead_units, each a list of G numbers."""
        n = self.count
        total, total_sq = self.sum.double(), self.sumsq.double()
        var = ((total_sq - total * total / n) / max(n - 1, 1)).clamp_min(0.0)
        return {
            "mean": (total / n).tolist(),
            "std": var.sqrt().tolist(),
            "near_zero_frac": (self.hist[:, 0].double() / n).tolist(),
            "dead_units": (self.unit_pos == 0).sum(dim=1).tolist(),
        }


def batched_stats(pre: torch.Tensor, act: torch.Tensor, model_dim: int, bins: int = HIST_BINS,
                  hist_max: float = HIST_MAX, workspace: dict | None = None,
                  chunk_elements: int = CHUNK_ELEMENTS, compiled: bool = True) -> BatchedStats:
    """`activation_stats` of G models at once, the histogram counted exactly as histc counts it.

    pre, act: the models in `model_dim` (0 or 1), the units in dim 2, every other dim is rows:
    (G, B, N) for stacked linear layers, (B, G, C, H, W) for grouped convolutions.
    compiled: on the CPU, one pass of a C loop (kernels/activation_stats_cpu.py) where it applies;
    elsewhere, or with False, a dozen PyTorch passes, which the two arguments below tune.
    workspace: a dict kept between calls, in which the scratch tensors are reused: a fresh tensor
    of a few MB costs the CPU its page faults again, as much as a pass over it.
    chunk_elements: on the CPU, the batch is taken in chunks of about this many elements, each through
    every pass while it is in the cache; over a whole layer, each pass paid its memory traffic. On a
    GPU in one piece: each chunk would cost its launches and the overflow check's sync.
    """
    if compiled and (one_pass := layer_stats(pre.detach(), act.detach(), model_dim, bins, hist_max)) is not None:
        return from_kernel(one_pass)
    batch_dim = 1 - model_dim
    rows = act.shape[batch_dim]
    if act.device.type == "cpu":
        rows = max(1, chunk_elements * rows // max(act.numel(), 1))
    workspace = {} if workspace is None else workspace
    parts = [_chunk_stats(p, a, model_dim, bins, hist_max, workspace)
             for p, a in zip(pre.detach().split(rows, batch_dim), act.detach().split(rows, batch_dim))]
    counts = sum(part[0] for part in parts)  # (G, units, pre > 0, slots)
    per_model = counts.sum(dim=(1, 2))
    hist = per_model[:, :bins].to(torch.float32)
    hist[:, -1] += per_model[:, bins] - sum(part[1] for part in parts)  # histc's last bin includes hist_max
    # Chunks' sums of squares about their own means, combined about the whole batch's (Chan et al.).
    count = act.numel() // act.shape[model_dim]
    total = sum(part[2] for part in parts)
    m2 = sum(m2 + n * (chunk_total / n - total / count) ** 2 for _, _, chunk_total, m2, n in parts)
    return BatchedStats(
        sum=total,
        sumsq=m2 + total * total / count,  # float64: summaries take it apart again without loss
        count=count,
        hist=hist,
        unit_pos=counts[:, :, 1].sum(dim=2),
    )


def _chunk_stats(pre: torch.Tensor, a: torch.Tensor, model_dim: int, bins: int, hist_max: float,
                 workspace: dict) -> tuple[torch.Tensor, torch.Tensor | int, torch.Tensor, torch.Tensor, int]:
    """One chunk of rows: counts per (model, unit, pre > 0, slot: the bins, |a| >= hist_max, NaN),
    how many |a| > hist_max per model (0 where none), the sum and the sum of squares about the
    chunk's mean per model (float64), and the elements per model."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    n_models, n_units = a.shape[model_dim], a.shape[2]
    others = [d for d in range(a.dim()) if d != model_dim]

    # Every pass below is one plain same-dtype op: on the CPU, comparisons into bool tensors,
    # mixed-dtype adds and `where` cost several times more than these (measured, 1.6M elements).
    scaled = _scratch(workspace, "scaled", a, acc)
    if a.dtype == acc:
        torch.abs(a, out=scaled)
    else:
        scaled.copy_(a).abs_()
    scaled.mul_(bins / hist_max)
    flags = _scratch(workspace, "flags", a, acc)
    slots = bins + 2
    above = 0
    # Reductions and broadcasts over the flat memory, not the (maybe channels-last) shape: over the
    # shape, max and the offsets' add ran 5x and 3x slower than a pass (measured, 1.6M elements).
    if not _flat(scaled).amax() < bins:  # some |a| >= hist_max, or NaN (amax passes it on): rare, checked first
        above = torch.gt(scaled, bins, out=flags).sum(dim=others)  # |a| > hist_max (and inf): not counted
        scaled.clamp_(max=bins).nan_to_num_(nan=bins + 1)
    # Floor, then add the flag's offset: added first, it rounded a value just below an edge up to it.
    scaled.floor_().add_(torch.gt(pre, 0, out=flags), alpha=slots)
    index = _scratch(workspace, "index", a, torch.int32).copy_(scaled)
    index += _unit_offsets(workspace, index, model_dim, 2 * slots)
    # The scratch tensor is dense in some order (maybe channels-last); counting does not mind which.
    counts = torch.bincount(_flat(index), minlength=n_models * n_units * 2 * slots)
    # The sum of squares is taken about the mean: summed raw in float32, sumsq - sum^2 / n loses the
    # variance when |mean| >> std (at mean / std = 1e3: 4% off on 2,560 elements, 10x on 1.6 million);
    # one more pass keeps it.
    count = a.numel() // n_models
    total = a.sum(dim=others, dtype=acc)
    model_shape = [1] * a.dim()
    model_shape[model_dim] = n_models
    centred = torch.sub(a, (total / count).view(model_shape), out=_scratch(workspace, "centred", a, acc))
    m2 = torch.linalg.vector_norm(centred, dim=others).double() ** 2
    return counts.view(n_models, n_units, 2, slots), above, total.double(), m2, count


def _unit_offsets(workspace: dict, index: torch.Tensor, model_dim: int, per_unit: int) -> torch.Tensor:
    """`per_unit` x (model, unit) number of each element, laid out as `index`: made once per shape."""
    key = ("offsets", tuple(index.shape), index.stride(), model_dim, per_unit, index.device)
    if key not in workspace:
        shape = [1] * index.dim()
        shape[model_dim], shape[2] = index.shape[model_dim], index.shape[2]
        numbers = torch.arange(shape[model_dim] * shape[2], device=index.device, dtype=torch.int32) * per_unit
        workspace[key] = torch.empty_like(index).copy_(numbers.view(shape).expand_as(index))
    return workspace[key]


def _flat(dense: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order, as one dimension."""
    return dense.as_strided((dense.numel(),), (1,))


def _scratch(workspace: dict, name: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A reused tensor with `like`'s shape and memory layout (channels-last stays channels-last,
    so every pass reads and writes memory in order)."""
    key = (name, tuple(like.shape), like.stride(), dtype, like.device)
    if key not in workspace:
        workspace[key] = torch.empty_like(like, dtype=dtype)
    return workspace[key]


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
            "mean": self.mean[-1], "std": self.std[-1], "near_zero_frac": self.near_zero_frac[-1],
            "dead_units": self.dead_units[-1], "units": self.units,
        }


class LayerRecords:
    """One layer's `BatchedStats` over the recorded steps, for models that may leave the batch.

    `add(step, stats, models)`: `models[i]` names the model in row i of `stats`. `history(model)`
    reads one model's rows back as a `LayerHistory`.
    """

    def __init__(self):
        self.entries: list[tuple[int, BatchedStats, dict[int, int]]] = []
        self._summaries: dict[int, dict[str, list]] = {}

    def add(self, step: int, stats: BatchedStats, models: list[int]) -> None:
        self.entries.append((step, stats, {model: row for row, model in enumerate(models)}))

    def history(self, model: int) -> LayerHistory:
        steps, rows = [], []
        for index, (step, stats, row_of) in enumerate(self.entries):
            if model in row_of:
                steps.append(step)
                rows.append((index, stats, row_of[model]))
        summaries = [self._summary(index, stats) for index, stats, _ in rows]
        return LayerHistory(
            steps=steps,
            **{key: [summary[key][row] for summary, (_, _, row) in zip(summaries, rows)]
               for key in ("mean", "std", "near_zero_frac", "dead_units")},
            hist=[stats.hist[row].tolist() for _, stats, row in rows],
            units=rows[0][1].unit_pos.shape[1] if rows else 0,
        )

    def _summary(self, index: int, stats: BatchedStats) -> dict[str, list]:
        if index not in self._summaries:  # computed once for all G models of the entry
            self._summaries[index] = stats.summaries()
        return self._summaries[index]


class StatsRecorder:
    """Forward hooks on a model's activation modules that record `BatchedStats` (G = 1) of chosen steps.

    Use as a context manager (the hooks are removed on exit, also on error); set `recording` before
    each forward pass to say whether that pass is recorded.
    """

    def __init__(self, modules: list[nn.Module], bins: int = HIST_BINS, hist_max: float = HIST_MAX):
        self.modules, self.bins, self.hist_max = modules, bins, hist_max
        self.recording = False
        self.step = 0
        self.records = [LayerRecords() for _ in modules]
        self.workspace: dict = {}
        self._handles: list = []

    def __enter__(self) -> "StatsRecorder":
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(index)))
            if hasattr(module, "record_stats"):  # a fused layer skips its statistics on other passes
                self._handles.append(module.register_forward_pre_hook(self._tell_fused))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self.modules:
            if hasattr(module, "record_stats"):
                module.record_stats = True

    def _tell_fused(self, module, inputs) -> None:
        module.record_stats = self.recording

    def _hook(self, index: int):
        def hook(module, inputs, output):
            if self.recording:
                fused_stats = getattr(module, "last_stats", None)  # a fused layer reduced them already
                if fused_stats is not None:
                    stats = from_kernel(fused_stats, single=True)
                else:
                    # A model dim before the units (dim 1) makes one model's layer a batch of G = 1.
                    stats = batched_stats(inputs[0].unsqueeze(1), output.unsqueeze(1), 1, self.bins, self.hist_max,
                                          self.workspace)
                self.records[index].add(self.step, stats, [0])
        return hook

    def history(self) -> list[LayerHistory]:
        return [records.history(0) for records in self.records]


def from_kernel(fused_stats, single: bool = False) -> BatchedStats:
    """The fused kernel's `LinearActStats` as `BatchedStats`; `single`: the kernel ran without a G dim.

    The kernel's float64 mean and variance become float64 sums: `summaries` takes them back apart
    with a relative error near 1e-16 (mean / std)^2, far below the kernel's own."""
    parts = (fused_stats.mean, fused_stats.var, fused_stats.hist, fused_stats.unit_pos)
    mean, var, hist, unit_pos = (t.unsqueeze(0) for t in parts) if single else parts
    n = fused_stats.count
    return BatchedStats(mean * n, (var + mean * mean) * n, n, hist.to(torch.float32), unit_pos)
