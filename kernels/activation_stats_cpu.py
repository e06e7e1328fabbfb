"""Activation statistics in one pass on the CPU: a C loop, its builder, its launcher and the
pure-PyTorch reference.

`layer_stats(pre, act, model_dim, bins, hist_max)` reads a layer's activation `act` and
pre-activation `pre` once, in memory order, and returns for each of its G models what the fused
Triton kernel returns (`fused_linear_act.LinearActStats`): mean and population variance (float64),
the histogram of |a| with `torch.histc`'s rule over [0, hist_max], and per unit the count of
pre > 0. `reference_layer_stats` is the same in PyTorch, in float64. `study.stats.batched_stats`
uses it on the CPU; where it returns None (no C compiler, a GPU tensor, a layout or a dtype it does
not take) the statistics are computed in PyTorch passes instead.

A value's bin is floor(|a| x (bins / hist_max)) in the input's precision. histc's own order of
operations gives the same bins where bins / hist_max is a power of two, as the project's 40 / 10;
elsewhere a value within rounding of an edge may fall on its other side.

The C file is compiled on first use with the system's C compiler (`CC`, else `cc`) into the
cache (`INITSTUDY_CACHE`, else ~/.cache/initstudy), named by a hash of the source, the flags,
the compiler and the CPU, and loaded with ctypes, which lets go of the GIL for the call. A damaged
build is built again once; a failed build is not retried in that process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

SOURCE = Path(__file__).with_suffix(".c")
# -march=native: the vector units of the CPU it runs on (the cache's name holds the CPU).
# -fno-trapping-math: the histogram's comparisons may then become vector selects (NaN compares
# raise a flag nobody reads); without it the loop ran 2x slower on AVX2 (measured).
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
_FUNCTIONS = {torch.float32: "lane_stats_float32", torch.float64: "lane_stats_float64"}


class LayerStats(NamedTuple):
    """The fields of `fused_linear_act.LinearActStats`: mean, var (G,) float64 (var divided by
    count); hist (G, bins) and unit_pos (G, units) int64 counts; count: elements per model."""

    mean: torch.Tensor
    var: torch.Tensor
    hist: torch.Tensor
    unit_pos: torch.Tensor
    count: int


def layer_stats(pre: torch.Tensor, act: torch.Tensor, model_dim: int, bins: int,
                hist_max: float) -> LayerStats | None:
    """The C loop's statistics, or None where it does not apply.

    pre, act: the same shape and strides, dense, on the CPU, float32 or float64; models in
    `model_dim` (0 or 1), units in dim 2, every other dim rows. The models' dim must be the
    outermost in memory or sit just outside the units' (as a grouped convolution's output has
    it, channels-last or not).
    """
    if (act.device.type != "cpu" or pre.device != act.device or act.dtype not in _FUNCTIONS or pre.dtype != act.dtype
            or pre.shape != act.shape or pre.stride() != act.stride() or act.numel() == 0):
        return None
    dims = _loop_dims(act, model_dim)
    library = _library()
    if dims is None or library is None:
        return None
    n_models, n_units = act.shape[model_dim], act.shape[2]
    lanes = n_models * n_units
    shift, s1, s2 = (torch.zeros(lanes, dtype=torch.float64) for _ in range(3))
    pos = torch.zeros(lanes, dtype=torch.int64)
    hist = torch.zeros(lanes, bins + 1, dtype=torch.int64)
    pointer = ctypes.c_void_p
    getattr(library, _FUNCTIONS[act.dtype])(
        pointer(act.data_ptr()), pointer(pre.data_ptr()), *(ctypes.c_int64(d) for d in dims),
        ctypes.c_int64(bins), ctypes.c_double(bins / hist_max),
        *(pointer(t.data_ptr()) for t in (shift, s1, s2, pos, hist)))
    # Each lane (model, unit) has its moments about its own shift; the units' combine about the
    # model's mean (Chan et al.).
    per_lane = act.numel() // lanes
    lane_mean = (shift + s1 / per_lane).view(n_models, n_units)
    lane_m2 = (s2 - s1 * s1 / per_lane).view(n_models, n_units)
    mean = lane_mean.mean(dim=1)
    m2 = lane_m2.sum(dim=1) + per_lane * ((lane_mean - mean.unsqueeze(1)) ** 2).sum(dim=1)
    count = per_lane * n_units
    return LayerStats(mean, m2 / count, hist[:, :bins].view(n_models, n_units, bins).sum(dim=1),
                      pos.view(n_models, n_units), count)


def reference_layer_stats(pre: torch.Tensor, act: torch.Tensor, model_dim: int, bins: int,
                          hist_max: float) -> LayerStats:
    """`layer_stats` in PyTorch: moments in float64, one model at a time."""
    models = list(zip(act.unbind(model_dim), pre.unbind(model_dim)))  # each (..., units at dim 1, ...)
    values = [a.double() for a, _ in models]
    return LayerStats(
        mean=torch.stack([a.mean() for a in values]),
        var=torch.stack([a.var(correction=0) for a in values]),
        hist=torch.stack([torch.histc(a.abs(), bins, 0, hist_max) for a in values]).to(torch.int64),
        unit_pos=torch.stack([(p > 0).transpose(0, 1).flatten(1).sum(dim=1) for _, p in models]),
        count=values[0].numel(),
    )


def _loop_dims(act: torch.Tensor, model_dim: int) -> tuple[int, int, int, int, int] | None:
    """(M, P, Gi, U, Q) of the C loop for `act`'s memory, or None when it cannot be walked so:
    models outermost (M = G, Gi = 1) or just outside the units (M = 1, Gi = G); Q = the units'
    stride, P = the rest. A dim of size 1 has no place in memory: a single unit is taken as Q = 1
    with the models outermost, else with the models' stride."""
    if not _dense(act):
        return None
    n_models, n_units = act.shape[model_dim], act.shape[2]
    model_stride = act.stride(model_dim) if n_models > 1 else act.numel()
    candidates = []  # (M, Gi, Q)
    if model_stride == act.numel() // n_models:
        candidates.append((n_models, 1, act.stride(2) if n_units > 1 else 1))
    if n_models > 1:
        candidates.append((1, n_models, act.stride(2) if n_units > 1 else model_stride))
    for models_out, models_in, inner in candidates:
        dims = (models_out, act.numel() // (n_models * n_units * inner), models_in, n_units, inner)
        if _walks(act, model_dim, dims):
            return dims
    return None


def _walks(act: torch.Tensor, model_dim: int, dims: tuple[int, int, int, int, int]) -> bool:
    """Whether the walk `dims` visits each element of the dense `act` once, at its place: the units'
    and the models' strides as the walk has them, the rows' inside Q (multiplying to Q) or outside
    the models' and units' block."""
    models_out, rows, models_in, n_units, inner = dims
    if models_out * rows * models_in * n_units * inner != act.numel():
        return False
    if n_units > 1 and act.stride(2) != inner:
        return False
    if models_in > 1 and act.stride(model_dim) != n_units * inner:
        return False
    row_dims = [d for d in range(act.dim()) if d not in (model_dim, 2) and act.shape[d] > 1]
    inside = [d for d in row_dims if act.stride(d) < inner]
    block = models_in * n_units * inner
    return (math.prod(act.shape[d] for d in inside) == inner
            and all(act.stride(d) >= block for d in row_dims if d not in inside))


def _dense(t: torch.Tensor) -> bool:
    """Its elements fill its storage span without gaps or overlaps, in some order of the dims."""
    sizes_strides = sorted((s, n) for n, s in zip(t.shape, t.stride()) if n > 1)
    expected = 1
    for stride, size in sizes_strides:
        if stride != expected:
            return False
        expected *= size
    return True


def available() -> bool:
    """Whether the C loop is built and loaded in this process (where not, `layer_stats` is None)."""
    return _library() is not None


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled loop, built into the cache once per machine; None when it cannot be built."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    try:
        source = SOURCE.read_bytes()
        key = hashlib.sha256(source + repr((FLAGS, compiler, platform.machine(), _cpu())).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("INITSTUDY_CACHE", Path.home() / ".cache" / "initstudy")) / "kernels"
        built = cache / f"activation_stats_cpu-{key}.so"
        if not built.exists():
            _build(compiler, built)
        try:
            library = ctypes.CDLL(str(built))
        except OSError:  # damaged (a disk that filled up under another build): built again, once
            built.unlink(missing_ok=True)
            _build(compiler, built)
            library = ctypes.CDLL(str(built))
    except (OSError, RuntimeError, subprocess.SubprocessError):  # RuntimeError: no home directory
        return None
    for name in _FUNCTIONS.values():
        getattr(library, name).restype = None
    return library


def _build(compiler: str, built: Path) -> None:
    """Compile SOURCE into `built`. Processes building at once each finish their own file, then
    swap it in whole."""
    built.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=built.parent) as scratch:
        partial = Path(scratch) / built.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial)], check=True, capture_output=True,
                       timeout=120)
        os.replace(partial, built)


def _cpu() -> str:
    """What `-march=native` compiled for: the CPU's model and feature flags, where Linux says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
