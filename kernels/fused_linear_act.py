"""Fused linear + bias + GeneralRelu + activation statistics, forward and backward, G models per launch.

For each model g (G >= 1) of a batch of models:

    z[g] = x[g] @ weight[g].T + bias[g]                      pre-activation, (M, N)
    y[g] = clamp_max(leaky_relu(z[g], leak[g]) - sub[g], maxv[g])

and, reduced from the tile while it is still in registers (y is never re-read from memory):

    mean[g], var[g] = mean and population variance of the M x N elements of y[g]     float64
    hist[g]     = counts of |y[g]| in hist_bins equal bins over [0, hist_max], as
                  torch.histc(y[g].abs(), hist_bins, 0, hist_max) counts them (above hist_max: not counted)
    unit_pos[g] = for each output unit n, the number of rows m with z[g, m, n] > 0 (0: a dead unit)

x is (M, K) shared by all models (a first layer) or (G, M, K); weight (G, N, K); bias (G, N);
leak, sub, maxv floats or (G,) tensors. The single-model form x (M, K), weight (N, K), bias (N,)
returns y (M, N) and statistics without the G dimension. Statistics are of y as stored: for
bfloat16 and float16 outputs, of the rounded values.

One op, one file (over 300 lines on purpose): the Triton kernels, their launchers, the registered
op with its autograd formula, and the float64-checked PyTorch reference are read and changed together.
kernels/README.md explains the design.

Forward: ONE launch. Grid (tiles of y, G), tiles visited GROUP_R row tiles at a time (neighbouring
programs share x rows and weight columns in L2). The K loop accumulates `tl.dot` in float32 at the
precision `torch.get_float32_matmul_precision()` asks for ("highest": IEEE, "high"/"medium": TF32)
unless `precision` names one. The epilogue adds the bias, applies GeneralRelu, stores y and a one-byte
slope code, then writes the tile's partial statistics (mean, the deviations' sum, M2 about the tile's
own mean, histogram, positive counts per unit) to the tile's own slot. The last program of each model to finish (an atomic
ticket, used for ordering only) merges the slots in tile order, the float ones in float64 with the
parallel-variance formula (Chan et al.), so the statistics are bitwise the same run after run and
stable when |mean| >> std. It resets the ticket, so the next launch finds it at zero.

Backward: at most TWO launches. dz = dy * slope is formed from the code in the prologue of both GEMMs
(never stored): one kernel gives dx = dz @ weight (for a shared x, summed over models and units in
one reduction, no (G, M, K) temporary), the other dweight = dz.T @ x with dbias = sum over rows of dz
accumulated in the same loop.

Tile sizes: `@triton.autotune` over a small set (32x64 to 128x128, BLOCK_K 32/64) keyed on the shape
and G, its choice cached on disk (`cache_results`), so one shape keeps one tiling and hence bitwise
the same results across runs on one machine. Under Triton's interpreter (TRITON_INTERPRET=1, set before triton
is imported) the set is pruned to one tile as large as the problem, because there cost grows with
programs x K-steps. `reference_linear_act` is the same computation in plain PyTorch, any dtype.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PRECISIONS = ("ieee", "tf32", "tf32x3")
# Slots the merging program reads per step: 64 tiles' moments and histograms; 16 row tiles x 256
# units of positive counts (the target shape's in one step each, at 64 x 64 tiles).
MERGE_TILES = tl.constexpr(64)
POS_ROWS, POS_COLS = tl.constexpr(16), tl.constexpr(256)
# The activations the epilogue knows (study/activations.py declares each): name -> the constexpr id
# its branch in `_activate` and `_slope` tests. A new one is a name here and a branch in each.
ACTIVATIONS = {"general_relu": 0}
GENERAL_RELU = tl.constexpr(ACTIVATIONS["general_relu"])


class LinearActStats(NamedTuple):
    """Statistics of y. Shapes: mean, var (G,) float64; hist (G, bins) and unit_pos (G, N) int64
    counts; no G dimension in the single-model form."""

    mean: torch.Tensor
    var: torch.Tensor  # population variance (divided by count)
    hist: torch.Tensor
    unit_pos: torch.Tensor
    count: int  # elements of y per model: M * N


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# Tile configurations


def _configs() -> list[triton.Config]:
    shapes = [(32, 64, 32, 4, 4), (64, 64, 32, 4, 4), (64, 64, 64, 4, 3), (128, 64, 32, 4, 4),
              (64, 128, 32, 4, 4), (128, 128, 32, 8, 3), (128, 128, 64, 8, 3)]
    return [triton.Config({"BLOCK_R": r, "BLOCK_C": c, "BLOCK_K": k, "GROUP_R": 8}, num_warps=w, num_stages=s)
            for r, c, k, w, s in shapes]


CONFIGS = _configs()
SMALLEST_TILE = (min(c.kwargs["BLOCK_R"] for c in CONFIGS), min(c.kwargs["BLOCK_C"] for c in CONFIGS))


def _pruner(rows: str, cols: str, reduced: str):
    """early_config_prune for a GEMM whose output is (rows x cols) and which reduces over `reduced`
    (argument names): under the interpreter one config as large as the problem; on a GPU the set
    without tiles wider than the output needs (tl.dot needs every dimension >= 16)."""
    def fit(size: int, cap: int) -> int:
        return max(16, min(cap, triton.next_power_of_2(size)))

    def prune(configs, named_args, **kwargs):
        R, C, K = named_args[rows], named_args[cols], named_args[reduced]
        if interpreting():
            return [triton.Config({"BLOCK_R": fit(R, 512), "BLOCK_C": fit(C, 256), "BLOCK_K": fit(K, 256),
                                   "GROUP_R": 8})]
        kept = [c for c in configs if c.kwargs["BLOCK_C"] <= fit(C, 128) and c.kwargs["BLOCK_R"] <= fit(R, 128)]
        return kept or configs[:1]
    return prune


def _autotune(rows: str, cols: str, reduced: str):
    return triton.autotune(CONFIGS, key=["G", rows, cols, reduced], cache_results=True,
                           prune_configs_by={"early_config_prune": _pruner(rows, cols, reduced)})


@torch.compiler.assume_constant_result  # torch.compile reads the setting once, when it traces
def matmul_precision(precision: str | None, dtype: torch.dtype) -> str:
    """tl.dot's input_precision: as asked, else as torch's float32 matmul precision says."""
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision
    if dtype != torch.float32:
        return "ieee"  # half inputs take the tensor cores' own path; the argument is ignored
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _tile(pid, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_R: tl.constexpr):
    """(row tile, column tile) of program `pid`, GROUP_R row tiles at a time along the columns."""
    tiles_r = tl.cdiv(R, BLOCK_R)
    tiles_c = tl.cdiv(C, BLOCK_C)
    in_group = GROUP_R * tiles_c
    first_r = (pid // in_group) * GROUP_R
    group_rows = tl.minimum(tiles_r - first_r, GROUP_R)
    return first_r + (pid % in_group) % group_rows, (pid % in_group) // group_rows


@triton.jit
def _elements(pid_r, pid_c, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Elements of tile (pid_r, pid_c) that lie inside the (R x C) output: the count a tile's mean is
    over, and the weight the merge gives it."""
    return tl.minimum(R - pid_r * BLOCK_R, BLOCK_R) * tl.minimum(C - pid_c * BLOCK_C, BLOCK_C)


@triton.jit
def _activation(g, value, value_ptr, PER_MODEL: tl.constexpr):
    if PER_MODEL:
        return tl.load(value_ptr + g)
    return value


@triton.jit
def _activate(z, leak, sub, ACTIVATION: tl.constexpr):
    """The activation of z before the clamp, and its slope code: 1 where the slope is 1, 0 where leak."""
    tl.static_assert(ACTIVATION == GENERAL_RELU, "unknown activation")
    return tl.where(z > 0, z, z * leak) - sub, tl.where(z > 0, 1, 0)


@triton.jit
def _slope(code, leak, ACTIVATION: tl.constexpr):
    """The activation's derivative from the forward's code: 0 -> leak, 1 -> 1, 2 (clamped) -> 0."""
    tl.static_assert(ACTIVATION == GENERAL_RELU, "unknown activation")
    return tl.where(code == 1, 1.0, tl.where(code == 0, leak, 0.0))


@_autotune("M", "N", "K")
@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, code_ptr,
    leak_ptr, sub_ptr, maxv_ptr, leak, sub, maxv,  # per-model (G,) float32 tensors, or the scalars
    part_ptr, part_hist_ptr, part_pos_ptr, ticket_ptr,  # per-tile slots; per-model tickets (zero)
    mean_ptr, var_ptr, hist_ptr, pos_ptr,  # the merged statistics
    G, M, N, K,
    stride_xg, stride_xm, stride_xk,  # x's model stride is 0 when the models share x
    stride_wg, stride_wn, stride_wk,
    stride_bg, stride_bn,
    hist_scale, hist_max,  # hist_scale = hist_bins / hist_max
    LEAK_PER_MODEL: tl.constexpr, SUB_PER_MODEL: tl.constexpr, MAXV_PER_MODEL: tl.constexpr,
    HAS_MAXV: tl.constexpr, SAVE_CODE: tl.constexpr, STATS: tl.constexpr,
    HIST_BINS: tl.constexpr, HIST_BINS_POW2: tl.constexpr,  # Triton shapes are powers of two
    INPUT_PRECISION: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_R: tl.constexpr,
):
    g = tl.program_id(1)
    g64 = g.to(tl.int64)
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_R, BLOCK_C, GROUP_R)
    offs_m = pid_m * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_n = pid_n * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    in_m = offs_m < M
    in_n = offs_n < N
    x_ptrs = x_ptr + g64 * stride_xg + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + g64 * stride_wg + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk

    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        in_k = offs_k < K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue: bias, the activation, y and the slope code.
    bias = tl.load(b_ptr + g64 * stride_bg + offs_n * stride_bn, mask=in_n, other=0.0).to(tl.float32)
    z = acc + bias[None, :]
    y, code = _activate(z, _activation(g, leak, leak_ptr, LEAK_PER_MODEL), _activation(g, sub, sub_ptr, SUB_PER_MODEL),
                        ACTIVATION)
    if HAS_MAXV:
        ceiling = _activation(g, maxv, maxv_ptr, MAXV_PER_MODEL)
        clamped = y >= ceiling  # clamp_max's gradient is 0 at the tie, so the code is too
        y = tl.where(clamped, ceiling, y)
        code = tl.where(clamped, 2, code)
    valid = in_m[:, None] & in_n[None, :]
    out = g64 * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    y_stored = y.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + out, y_stored, mask=valid)
    if SAVE_CODE:
        tl.store(code_ptr + out, code.to(tl.int8), mask=valid)

    if STATS:
        tiles_n = tl.cdiv(N, BLOCK_C)
        tiles = tl.cdiv(M, BLOCK_R) * tiles_n
        slot = g64 * tiles + pid_m * tiles_n + pid_n  # in tile order, whatever order programs run in
        y = y_stored.to(tl.float32)  # the statistics of y as stored
        count = _elements(pid_m, pid_n, M, N, BLOCK_R, BLOCK_C)
        # The tile's mean in float32 is off by up to ~1e-7 |mean|; the deviations from it sum to the
        # correction, which the merge adds in float64, so the mean keeps ~1e-7 std, not ~1e-7 |mean|.
        tile_mean = tl.sum(tl.sum(tl.where(valid, y, 0.0), axis=1), axis=0) / count
        deviation = tl.where(valid, y - tile_mean, 0.0)
        tl.store(part_ptr + 3 * slot, tile_mean)
        tl.store(part_ptr + 3 * slot + 1, tl.sum(tl.sum(deviation, axis=1), axis=0))
        tl.store(part_ptr + 3 * slot + 2, tl.sum(tl.sum(deviation * deviation, axis=1), axis=0))
        magnitude = tl.abs(y)
        # histc's rule: bin floor(|y| * bins / max); |y| == max belongs to the last bin; above max: none.
        bins = tl.minimum((magnitude * hist_scale).to(tl.int32), HIST_BINS - 1)
        counted = valid & (magnitude <= hist_max)
        hist = tl.histogram(tl.reshape(bins, (BLOCK_R * BLOCK_C,)), HIST_BINS_POW2,
                            mask=tl.reshape(counted, (BLOCK_R * BLOCK_C,)))
        offs_bin = tl.arange(0, HIST_BINS_POW2)
        tl.store(part_hist_ptr + slot * HIST_BINS_POW2 + offs_bin, hist)
        positive = tl.sum(tl.where(valid & (z > 0), 1, 0), axis=0)  # (BLOCK_C,)
        tl.store(part_pos_ptr + (g64 * tl.cdiv(M, BLOCK_R) + pid_m) * N + offs_n, positive, mask=in_n)

        # Every thread's slot stores are issued before the ticket (acquire-release, GPU scope) is taken.
        tl.debug_barrier()
        if tl.atomic_add(ticket_ptr + g, 1) == tiles - 1:
            _merge(g64, M, N, part_ptr, part_hist_ptr, part_pos_ptr, mean_ptr, var_ptr, hist_ptr, pos_ptr,
                   HIST_BINS, HIST_BINS_POW2, BLOCK_R, BLOCK_C)
            tl.atomic_xchg(ticket_ptr + g, 0)


@triton.jit
def _merge(g, M, N, part_ptr, part_hist_ptr, part_pos_ptr, mean_ptr, var_ptr, hist_ptr, pos_ptr,
           HIST_BINS: tl.constexpr, HIST_BINS_POW2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Model g's slots in tile order, MERGE_TILES at a time (one round trip to memory each: at the
    target shape, one for the moments and histogram and one for the unit counts). Mean and M2 in
    float64: each chunk's by the parallel-variance formula (M2 = sum M2_t + sum n_t (mean_t -
    mean)^2), chunks folded in by Chan's update. `.cg` loads skip L1: other SMs wrote the slots."""
    tiles_m = tl.cdiv(M, BLOCK_R)
    tiles_n = tl.cdiv(N, BLOCK_C)
    tiles = tiles_m * tiles_n
    first = g * tiles
    offs = tl.arange(0, MERGE_TILES)
    offs_bin = tl.arange(0, HIST_BINS_POW2)

    n = tl.sum(tl.zeros((MERGE_TILES,), dtype=tl.float64), axis=0)  # a float64 scalar: 0
    mean = n
    m2 = n
    hist = tl.zeros((HIST_BINS_POW2,), dtype=tl.int64)
    for start in range(0, tiles, MERGE_TILES):
        t = start + offs
        count, tile_mean, tile_m2 = _slots(part_ptr, first, t, tiles, tiles_n, M, N, BLOCK_R, BLOCK_C)
        chunk_n = tl.sum(count, axis=0)
        chunk_mean = tl.sum(count * tile_mean, axis=0) / chunk_n
        chunk_m2 = tl.sum(tile_m2 + count * (tile_mean - chunk_mean) * (tile_mean - chunk_mean), axis=0)
        delta = chunk_mean - mean
        m2 += chunk_m2 + delta * delta * n * chunk_n / (n + chunk_n)
        n += chunk_n
        mean += delta * chunk_n / n
        block = tl.load(part_hist_ptr + (first + t)[:, None] * HIST_BINS_POW2 + offs_bin[None, :],
                        mask=(t < tiles)[:, None], other=0, cache_modifier=".cg")
        hist += tl.sum(block.to(tl.int64), axis=0)
    tl.store(mean_ptr + g, mean)
    tl.store(var_ptr + g, m2 / n)
    tl.store(hist_ptr + g * HIST_BINS + offs_bin, hist, mask=offs_bin < HIST_BINS)

    offs_r = tl.arange(0, POS_ROWS)
    offs_n = tl.arange(0, POS_COLS)
    for n0 in range(0, N, POS_COLS):
        positive = tl.zeros((POS_COLS,), dtype=tl.int64)
        for start in range(0, tiles_m, POS_ROWS):
            r = start + offs_r
            block = tl.load(part_pos_ptr + (g * tiles_m + r)[:, None] * N + n0 + offs_n[None, :],
                            mask=(r < tiles_m)[:, None] & (n0 + offs_n < N)[None, :], other=0,
                            cache_modifier=".cg")
            positive += tl.sum(block.to(tl.int64), axis=0)
        tl.store(pos_ptr + g * N + n0 + offs_n, positive, mask=n0 + offs_n < N)


@triton.jit
def _slots(part_ptr, first, t, tiles, tiles_n, M, N, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Elements, mean and M2 of tiles t (0 past the last tile), in float64, with the float32 mean's
    correction (the deviations' sum) added and its effect on M2 taken out."""
    count = tl.where(t < tiles, _elements(t // tiles_n, t % tiles_n, M, N, BLOCK_R, BLOCK_C).to(tl.float64), 0.0)
    slot = 3 * (first + t)
    mean = tl.load(part_ptr + slot, mask=t < tiles, other=0.0, cache_modifier=".cg").to(tl.float64)
    shift = tl.load(part_ptr + slot + 1, mask=t < tiles, other=0.0, cache_modifier=".cg").to(tl.float64)
    m2 = tl.load(part_ptr + slot + 2, mask=t < tiles, other=0.0, cache_modifier=".cg").to(tl.float64)
    shift = shift / tl.maximum(count, 1.0)
    return count, mean + shift, m2 - count * shift * shift


@_autotune("M", "K", "N")
@triton.jit
def _dx_kernel(
    dy_ptr, code_ptr, w_ptr, dx_ptr, leak_ptr, leak,
    G, M, N, K,
    stride_dyg, stride_dym, stride_dyn,
    stride_wg, stride_wn, stride_wk,
    SHARED_X: tl.constexpr, LEAK_PER_MODEL: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_R: tl.constexpr,
):
    """dx[g] = dz[g] @ weight[g], tiles (BLOCK_R rows of M) x (BLOCK_C columns of K), reducing over
    units n in BLOCK_K steps; with a shared x, over models and units: dx = sum_g dz[g] @ weight[g]."""
    pid_m, pid_k = _tile(tl.program_id(0), M, K, BLOCK_R, BLOCK_C, GROUP_R)
    offs_m = pid_m * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = pid_k * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_K)
    in_m = offs_m < M
    in_k = offs_k < K
    if SHARED_X:
        g_first = 0
        g_last = G
    else:
        g_first = tl.program_id(1)
        g_last = g_first + 1

    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for g in range(g_first, g_last):
        g64 = tl.cast(g, tl.int64)
        slope_of_leak = _activation(g, leak, leak_ptr, LEAK_PER_MODEL)
        for n0 in range(0, N, BLOCK_K):
            in_n = n0 + offs_n < N
            tile = in_m[:, None] & in_n[None, :]
            dy = tl.load(dy_ptr + g64 * stride_dyg + offs_m[:, None] * stride_dym + (n0 + offs_n[None, :]) * stride_dyn,
                         mask=tile, other=0.0)
            code = tl.load(code_ptr + g64 * M * N + offs_m[:, None].to(tl.int64) * N + n0 + offs_n[None, :],
                           mask=tile, other=0)
            dz = (dy.to(tl.float32) * _slope(code, slope_of_leak, ACTIVATION)).to(w_ptr.dtype.element_ty)
            w = tl.load(w_ptr + g64 * stride_wg + (n0 + offs_n[:, None]) * stride_wn + offs_k[None, :] * stride_wk,
                        mask=in_n[:, None] & in_k[None, :], other=0.0)
            acc = tl.dot(dz, w, acc, input_precision=INPUT_PRECISION)
    out = tl.program_id(1).to(tl.int64) * M * K + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=in_m[:, None] & in_k[None, :])


@_autotune("N", "K", "M")
@triton.jit
def _dweight_kernel(
    dy_ptr, code_ptr, x_ptr, dw_ptr, db_ptr, leak_ptr, leak,
    G, M, N, K,
    stride_dyg, stride_dym, stride_dyn,
    stride_xg, stride_xm, stride_xk,
    LEAK_PER_MODEL: tl.constexpr, WITH_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_R: tl.constexpr,
):
    """dweight[g] = dz[g].T @ x[g], tiles (BLOCK_R units) x (BLOCK_C columns of K), reducing over rows
    m in BLOCK_K steps; the programs of the first column tile also sum dz over rows: dbias[g]."""
    g = tl.program_id(1)
    g64 = g.to(tl.int64)
    pid_n, pid_k = _tile(tl.program_id(0), N, K, BLOCK_R, BLOCK_C, GROUP_R)
    offs_n = pid_n * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = pid_k * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK_K)
    in_n = offs_n < N
    in_k = offs_k < K
    slope_of_leak = _activation(g, leak, leak_ptr, LEAK_PER_MODEL)

    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_K):
        in_m = m0 + offs_m < M
        tile = in_n[:, None] & in_m[None, :]  # dz.T: (units, rows)
        dy = tl.load(dy_ptr + g64 * stride_dyg + (m0 + offs_m[None, :]) * stride_dym + offs_n[:, None] * stride_dyn,
                     mask=tile, other=0.0)
        code = tl.load(code_ptr + g64 * M * N + (m0 + offs_m[None, :]).to(tl.int64) * N + offs_n[:, None],
                       mask=tile, other=0)
        dz = dy.to(tl.float32) * _slope(code, slope_of_leak, ACTIVATION)
        if WITH_BIAS:
            bias_acc += tl.sum(dz, axis=1)
        x = tl.load(x_ptr + g64 * stride_xg + (m0 + offs_m[:, None]) * stride_xm + offs_k[None, :] * stride_xk,
                    mask=in_m[:, None] & in_k[None, :], other=0.0)
        acc = tl.dot(dz.to(x_ptr.dtype.element_ty), x, acc, input_precision=INPUT_PRECISION)
    out = g64 * N * K + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(dw_ptr + out, acc.to(dw_ptr.dtype.element_ty), mask=in_n[:, None] & in_k[None, :])
    if WITH_BIAS:
        if pid_k == 0:
            tl.store(db_ptr + g64 * N + offs_n, bias_acc.to(db_ptr.dtype.element_ty), mask=in_n)


# ----------------------------------------------------------------------------------------------
# The registered ops (torch.compile and CUDA graphs see one op each) and their launchers

_TICKETS: dict[torch.device, torch.Tensor] = {}


def _tickets(device: torch.device, models: int) -> torch.Tensor:
    """Per-model tickets of the forward, zero between launches (each launch's last program resets
    its own): zeroed once per device, so a launch costs no memset. Launches on one stream only."""
    tickets = _TICKETS.get(device)
    if tickets is None or tickets.numel() < models:
        tickets = _TICKETS[device] = torch.zeros(max(models, 64), dtype=torch.int32, device=device)
    return tickets


@triton_op("initstudy::fused_linear_act", mutates_args=())
def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                leak: float, sub: float, maxv: Optional[float],
                leak_g: Optional[torch.Tensor], sub_g: Optional[torch.Tensor], maxv_g: Optional[torch.Tensor],
                hist_bins: int, hist_max: float, stats: bool, save_code: bool, precision: str, activation: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y (G, M, N), code (G, M, N) int8 (empty unless save_code), mean, var (G,) float64,
    hist (G, hist_bins), unit_pos (G, N) int64 (empty unless stats)."""
    G, N, K = weight.shape
    M = x.shape[-2]
    device = x.device
    y = torch.empty((G, M, N), device=device, dtype=x.dtype)
    code = torch.empty((G, M, N) if save_code else (0,), device=device, dtype=torch.int8)
    models_with_stats = G if stats else 0
    max_tiles_m = triton.cdiv(M, SMALLEST_TILE[0])
    max_tiles = max_tiles_m * triton.cdiv(N, SMALLEST_TILE[1])
    hist_pow2 = triton.next_power_of_2(hist_bins)
    part = torch.empty((models_with_stats, max_tiles, 3), device=device, dtype=torch.float32)
    part_hist = torch.empty((models_with_stats, max_tiles, hist_pow2), device=device, dtype=torch.int32)
    part_pos = torch.empty((models_with_stats, max_tiles_m, N), device=device, dtype=torch.int32)
    mean = torch.empty(models_with_stats, device=device, dtype=torch.float64)
    var = torch.empty_like(mean)
    hist = torch.empty((models_with_stats, hist_bins), device=device, dtype=torch.int64)
    unit_pos = torch.empty((models_with_stats, N), device=device, dtype=torch.int64)
    tickets = _tickets(device, G) if stats else mean

    x_strides = (0, *x.stride()) if x.dim() == 2 else x.stride()
    wrap_triton(_forward_kernel)[lambda meta: (triton.cdiv(M, meta["BLOCK_R"]) * triton.cdiv(N, meta["BLOCK_C"]), G)](
        x, weight, bias, y, code,
        leak_g if leak_g is not None else bias, sub_g if sub_g is not None else bias,
        maxv_g if maxv_g is not None else bias, leak, sub, 0.0 if maxv is None else maxv,
        part, part_hist, part_pos, tickets, mean, var, hist, unit_pos,
        G, M, N, K, *x_strides, *weight.stride(), *bias.stride(), hist_bins / hist_max, hist_max,
        LEAK_PER_MODEL=leak_g is not None, SUB_PER_MODEL=sub_g is not None, MAXV_PER_MODEL=maxv_g is not None,
        HAS_MAXV=maxv is not None or maxv_g is not None, SAVE_CODE=save_code, STATS=stats,
        HIST_BINS=hist_bins, HIST_BINS_POW2=hist_pow2, INPUT_PRECISION=precision, ACTIVATION=activation,
    )
    return y, code, mean, var, hist, unit_pos


@triton_op("initstudy::fused_linear_act_backward", mutates_args=())
def _backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, code: torch.Tensor,
                 leak: float, leak_g: Optional[torch.Tensor], need_dx: bool, need_dweight: bool, need_dbias: bool,
                 precision: str, activation: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx (like x), dweight (G, N, K), dbias (G, N); each empty when not needed."""
    G, N, K = weight.shape
    M = x.shape[-2]
    shared = x.dim() == 2
    leak_ptr = leak_g if leak_g is not None else code
    empty = weight.new_empty(0)
    dx = dweight = dbias = empty
    if need_dx:
        dx = torch.empty((1 if shared else G, M, K), device=x.device, dtype=x.dtype)
        wrap_triton(_dx_kernel)[lambda meta: (triton.cdiv(M, meta["BLOCK_R"]) * triton.cdiv(K, meta["BLOCK_C"]),
                                              1 if shared else G)](
            dy, code, weight, dx, leak_ptr, leak, G, M, N, K, *dy.stride(), *weight.stride(),
            SHARED_X=shared, LEAK_PER_MODEL=leak_g is not None, INPUT_PRECISION=precision, ACTIVATION=activation)
        dx = dx[0] if shared else dx
    if need_dweight or need_dbias:
        dweight = torch.empty((G, N, K), device=x.device, dtype=weight.dtype)
        dbias = torch.empty((G, N), device=x.device, dtype=weight.dtype) if need_dbias else empty
        x_strides = (0, *x.stride()) if shared else x.stride()
        wrap_triton(_dweight_kernel)[lambda meta: (triton.cdiv(N, meta["BLOCK_R"]) * triton.cdiv(K, meta["BLOCK_C"]),
                                                   G)](
            dy, code, x, dweight, dbias, leak_ptr, leak, G, M, N, K, *dy.stride(), *x_strides,
            LEAK_PER_MODEL=leak_g is not None, WITH_BIAS=need_dbias, INPUT_PRECISION=precision,
            ACTIVATION=activation)
        dweight = dweight if need_dweight else empty
    return dx, dweight, dbias


def _setup_context(ctx, inputs, output):
    x, weight, _, leak, _, _, leak_g, *_, precision, activation = inputs
    ctx.save_for_backward(x, weight, output[1], leak_g)
    ctx.leak, ctx.precision, ctx.activation = leak, precision, activation
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero gradients made for the statistics


def _backward(ctx, dy, *unused_grads):
    """Gradients for x, weight and bias; none for the op's other inputs."""
    need = ctx.needs_input_grad
    others = (None,) * (len(need) - 3)
    if dy is None:
        return (None, None, None, *others)
    x, weight, code, leak_g = ctx.saved_tensors
    dx, dweight, dbias = _backward_op(dy, x, weight, code, ctx.leak, leak_g, need[0], need[1], need[2],
                                      ctx.precision, ctx.activation)
    return (dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None, *others)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# The public functions


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.device != weight.device or x.device != bias.device:
        raise ValueError(f"x, weight and bias must be on one device, got {x.device}, {weight.device}, {bias.device}")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError("fused_linear_act runs on CUDA tensors, or on the CPU under Triton's interpreter "
                         "(set TRITON_INTERPRET=1 before triton is imported); reference_linear_act runs anywhere")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} is {t.dtype}: fused_linear_act takes float32, bfloat16 or float16")
    if x.dtype != weight.dtype:
        raise ValueError(f"x ({x.dtype}) and weight ({weight.dtype}) must have one dtype")


def _shapes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[int, int, int, int]:
    """(G, M, N, K) of the batched form; ValueError with the shapes when they do not fit."""
    if weight.dim() != 3 or bias.dim() != 2 or x.dim() not in (2, 3):
        raise ValueError(f"expected x (M, K) or (G, M, K), weight (G, N, K), bias (G, N); "
                         f"got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    G, N, K = weight.shape
    M = x.shape[-2]
    if x.shape[-1] != K or (x.dim() == 3 and x.shape[0] != G) or tuple(bias.shape) != (G, N):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)} (want x (M, {K}) or ({G}, M, {K}), bias ({G}, {N}))")
    if min(G, M, N, K) < 1:
        raise ValueError(f"empty input: G={G}, M={M}, N={N}, K={K}")
    return G, M, N, K


def _per_model(value, G: int, name: str, device: torch.device) -> tuple[float, torch.Tensor | None]:
    """A float as itself, a tensor as a contiguous (G,) float32 tensor on `device` (no copy when it is one)."""
    if isinstance(value, torch.Tensor):
        if value.shape not in ((G,), ()):
            raise ValueError(f"{name} must be a float or a ({G},) tensor, got shape {tuple(value.shape)}")
        if value.device != device or value.dtype != torch.float32:
            value = value.to(device=device, dtype=torch.float32)
        return 0.0, value if value.shape == (G,) and value.is_contiguous() else value.expand(G).contiguous()
    return float(value), None


def fused_linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, leak, sub, maxv=None, *,
                     hist_bins: int = 40, hist_max: float = 10.0, stats: bool = True,
                     precision: str | None = None, activation: str = "general_relu"
                     ) -> tuple[torch.Tensor, LinearActStats | None]:
    """y = clamp_max(leaky_relu(x @ weight.T + bias, leak) - sub, maxv) and its statistics (None when
    `stats` is False: the kernel then skips them), in one kernel launch for all G models. See the
    module docstring for shapes and semantics; `precision`: tl.dot's ("ieee", "tf32", "tf32x3"),
    by default what torch.get_float32_matmul_precision() says; `activation`: one of ACTIVATIONS."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: the kernel has {', '.join(ACTIVATIONS)}")
    single = weight.dim() == 2
    if single:
        if x.dim() != 2 or bias.dim() != 1:
            raise ValueError(f"single model: expected x (M, K), weight (N, K), bias (N,); "
                             f"got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
        weight, bias = weight.unsqueeze(0), bias.unsqueeze(0)
    _check(x, weight, bias)
    G, M, N, _ = _shapes(x, weight, bias)
    if not (hist_bins >= 1 and hist_max > 0):
        raise ValueError(f"need hist_bins >= 1 and hist_max > 0, got {hist_bins}, {hist_max}")
    leak_s, leak_g = _per_model(leak, G, "leak", x.device)
    sub_s, sub_g = _per_model(sub, G, "sub", x.device)
    maxv_s, maxv_g = (None, None) if maxv is None else _per_model(maxv, G, "maxv", x.device)
    save_code = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
    y, _, mean, var, hist, unit_pos = _forward_op(
        x, weight, bias, leak_s, sub_s, maxv_s if maxv_g is None else None, leak_g, sub_g, maxv_g,
        hist_bins, float(hist_max), stats, save_code, matmul_precision(precision, x.dtype), ACTIVATIONS[activation])
    if single:  # squeeze, not y[0]: its backward is a view, where select's makes zeros and copies
        y, mean, var, hist, unit_pos = (t.squeeze(0) for t in (y, mean, var, hist, unit_pos))
    return y, (LinearActStats(mean, var, hist, unit_pos, M * N) if stats else None)


def reference_linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, leak, sub, maxv=None, *,
                         hist_bins: int = 40, hist_max: float = 10.0) -> tuple[torch.Tensor, LinearActStats]:
    """The same computation in plain PyTorch, any dtype and device (float64 for checking),
    differentiable through autograd; its statistics are taken in float64."""
    single = weight.dim() == 2
    if single:
        weight, bias = weight.unsqueeze(0), bias.unsqueeze(0)
    G, M, N, _ = _shapes(x, weight, bias)

    def per_model(value):
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        return t.expand(G).reshape(G, 1, 1)

    z = torch.matmul(x, weight.transpose(1, 2)) + bias.unsqueeze(1)  # (G, M, N)
    y = torch.where(z > 0, z, z * per_model(leak)) - per_model(sub)
    if maxv is not None:
        ceiling = per_model(maxv)
        y = torch.where(y < ceiling, y, ceiling)  # clamp_max, with its zero gradient at the tie
    with torch.no_grad():
        y64 = y.detach().double().flatten(1)
        stats = LinearActStats(
            mean=y64.mean(1), var=y64.var(1, correction=0),
            hist=torch.stack([torch.histc(y64[g].abs(), hist_bins, 0, hist_max) for g in range(G)]).long(),
            unit_pos=(z > 0).sum(1), count=M * N,
        )
    if single:
        return y[0], LinearActStats(*(t[0] for t in stats[:4]), M * N)
    return y, stats
