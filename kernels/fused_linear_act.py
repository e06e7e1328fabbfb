"""Fused linear + bias + GeneralRelu + activation statistics, forward and backward, G models per launch.

For each model g (G >= 1) of a batch of models:

    z[g] = x[g] @ weight[g].T + bias[g]                      pre-activation, (M, N)
    y[g] = clamp_max(leaky_relu(z[g], leak[g]) - sub[g], maxv[g])

and, reduced from the tile while it is still in registers (y is never re-read from memory):

    sum[g]      = sum of y[g]                                float32
    sumsq[g]    = sum of y[g]**2                             float32
    hist[g]     = counts of |y[g]| in hist_bins equal bins over [0, hist_max], as
                  torch.histc(y[g].abs(), hist_bins, 0, hist_max) counts them (above hist_max: not counted)
    unit_pos[g] = for each output unit n, the number of rows m with z[g, m, n] > 0 (0: a dead unit)

x is (M, K) shared by all models (a first layer) or (G, M, K); weight (G, N, K); bias (G, N);
leak, sub, maxv floats or (G,) tensors. The single-model form x (M, K), weight (N, K), bias (N,)
returns y (M, N) and statistics without the G dimension.

One op, one file (over 300 lines on purpose): the Triton kernels, their launcher, the autograd
Function and the float64-checked PyTorch reference are read and changed together.

Tiling: one program per (BLOCK_M x BLOCK_N) tile of y and per model (grid axis 1). The K loop
accumulates in float32 with `tl.dot` (inputs float32 or bfloat16; float32 uses IEEE precision unless
`allow_tf32=True`, which lets tensor cores round inputs to TF32: ~1e-3 relative error, several
times the throughput). The epilogue adds the bias, applies GeneralRelu, stores y, and reduces the
statistics of the tile.

Determinism: every tile writes its partial statistics (sum, sumsq: one float each; hist: hist_bins
int32 counts; unit_pos: BLOCK_N int32 counts) to its own slot of a buffer, and a second stage
reduces the buffers in a fixed order (float64 for the sums). No atomics: the same input gives
bitwise the same statistics. Cost: (2 + hist_bins) x 4 bytes per tile plus N x 4 bytes per row of
tiles, e.g. 10.8 KB + 16 KB for M=1024, N=256 with 64x64 tiles, against 1 MB for y itself; the
second stage is four tiny reductions (four launches).

Backward (autograd): gradients for x, weight and bias (not for leak, sub, maxv). The forward saves
x, weight and a one-byte code per element of y (0: z <= 0, slope leak; 1: z > 0, slope 1; 2:
clamped by maxv, slope 0), M x N bytes, a quarter of y in float32. A Triton kernel turns dy and the
code into dz = dy * slope; the three products dx = dz @ weight, dweight = dz.T @ x, dbias = sum dz
are batched GEMMs (cuBLAS on CUDA).

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1 set before triton is
imported), in float32. `reference_linear_act` is the same computation in plain PyTorch, any dtype.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


class LinearActStats(NamedTuple):
    """Statistics of y. Shapes: sum, sumsq (G,); hist (G, bins); unit_pos (G, N); no G when single."""

    sum: torch.Tensor  # float32
    sumsq: torch.Tensor  # float32
    hist: torch.Tensor  # int64 counts
    unit_pos: torch.Tensor  # int64 counts
    count: int  # elements of y per model: M * N


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _fused_linear_act_fwd(
    # tensors
    x_ptr, w_ptr, b_ptr, y_ptr, code_ptr,
    leak_ptr, sub_ptr, maxv_ptr,  # (G,) float32: each model's activation
    sum_ptr, sumsq_ptr, hist_ptr, pos_ptr,  # per-tile partial statistics
    # sizes
    M, N, K,
    # strides (x's model stride is 0 when the models share x)
    stride_xg, stride_xm, stride_xk,
    stride_wg, stride_wn, stride_wk,
    stride_bg, stride_bn,
    hist_scale,  # hist_bins / hist_max
    hist_max,
    # meta-parameters
    HAS_MAXV: tl.constexpr, SAVE_CODE: tl.constexpr, HIST_BINS: tl.constexpr,
    HIST_BINS_POW2: tl.constexpr,  # Triton shapes are powers of two: the histogram is padded to this
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Map program ids to the tile (pid_m, pid_n) of model g.
    g = tl.program_id(1)
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * tiles_n
    pid_m = pid // tiles_n
    pid_n = pid % tiles_n

    # Pointers to the first K-block of x (BLOCK_M, BLOCK_K) and of weight.T (BLOCK_K, BLOCK_N).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + g * stride_xg + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + g * stride_wg + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    in_m = offs_m < M
    in_n = offs_n < N

    # The K loop, accumulating in float32.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        in_k = offs_k < K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue: bias, GeneralRelu, store y (and the slope code for backward).
    bias = tl.load(b_ptr + g * stride_bg + offs_n * stride_bn, mask=in_n, other=0.0).to(tl.float32)
    z = acc + bias[None, :]
    leak = tl.load(leak_ptr + g)
    sub = tl.load(sub_ptr + g)
    y = tl.where(z > 0, z, z * leak) - sub
    code = tl.where(z > 0, 1, 0)
    if HAS_MAXV:
        maxv = tl.load(maxv_ptr + g)
        clamped = y > maxv
        y = tl.where(clamped, maxv, y)
        code = tl.where(clamped, 2, code)
    valid = in_m[:, None] & in_n[None, :]
    out = g * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=valid)
    if SAVE_CODE:
        tl.store(code_ptr + out, code.to(tl.int8), mask=valid)

    # Statistics of the tile, from registers, each into the tile's own slot.
    slot = g * tiles + pid
    y_valid = tl.where(valid, y, 0.0)
    tl.store(sum_ptr + slot, tl.sum(tl.sum(y_valid, axis=1), axis=0))
    tl.store(sumsq_ptr + slot, tl.sum(tl.sum(y_valid * y_valid, axis=1), axis=0))
    magnitude = tl.abs(y)
    # histc's rule: bin floor(|y| * bins / max); |y| == max belongs to the last bin; above max: none.
    bins = tl.minimum((magnitude * hist_scale).to(tl.int32), HIST_BINS - 1)
    counted = valid & (magnitude <= hist_max)
    hist = tl.histogram(tl.reshape(bins, (BLOCK_M * BLOCK_N,)), HIST_BINS_POW2,
                        mask=tl.reshape(counted, (BLOCK_M * BLOCK_N,)))
    offs_bin = tl.arange(0, HIST_BINS_POW2)
    tl.store(hist_ptr + slot * HIST_BINS + offs_bin, hist, mask=offs_bin < HIST_BINS)
    positive = tl.sum(tl.where(valid & (z > 0), 1, 0), axis=0)  # (BLOCK_N,)
    tl.store(pos_ptr + (g * tl.cdiv(M, BLOCK_M) + pid_m) * N + offs_n, positive, mask=in_n)


@triton.jit
def _act_grad(
    dy_ptr, code_ptr, leak_ptr, dz_ptr,
    MN,  # elements of y per model
    BLOCK: tl.constexpr,
):
    """dz = dy * slope, slope from the forward's code: 0 -> leak, 1 -> 1, 2 (clamped) -> 0."""
    g = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    dy = tl.load(dy_ptr + g * MN + offs, mask=mask, other=0.0).to(tl.float32)
    code = tl.load(code_ptr + g * MN + offs, mask=mask, other=0)
    leak = tl.load(leak_ptr + g)
    slope = tl.where(code == 1, 1.0, tl.where(code == 0, leak, 0.0))
    tl.store(dz_ptr + g * MN + offs, (dy * slope).to(dz_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers


def _tiles(M: int, N: int, K: int) -> dict:
    """Tile sizes and launch options.

    Interpreter: cost grows with programs x K-steps, so tiles as large as the problem (up to 512 rows,
    128 columns and K).
    CUDA: 64x64 tiles with 32-wide K-steps, 4 warps, 3 pipeline stages, the common choice for
    fp32/bf16 GEMMs of these sizes (N <= 256, K <= 784); tl.dot needs every dimension >= 16.
    Not tuned on a GPU (none was available): see kernels/README.md.
    """
    def fit(size: int, cap: int) -> int:
        return max(16, min(cap, triton.next_power_of_2(size)))

    if interpreting():
        return {"BLOCK_M": fit(M, 512), "BLOCK_N": fit(N, 128), "BLOCK_K": fit(K, 128)}
    return {"BLOCK_M": 64, "BLOCK_N": fit(N, 64), "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}


def _per_model(value, G: int, name: str, device: torch.device) -> torch.Tensor:
    """A float or (G,) tensor as a contiguous (G,) float32 tensor on `device`."""
    if isinstance(value, torch.Tensor):
        if value.shape not in ((G,), ()):
            raise ValueError(f"{name} must be a float or a ({G},) tensor, got shape {tuple(value.shape)}")
        return value.to(device=device, dtype=torch.float32).expand(G).contiguous()
    return torch.full((G,), float(value), dtype=torch.float32, device=device)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.device != weight.device or x.device != bias.device:
        raise ValueError(f"x, weight and bias must be on one device, got {x.device}, {weight.device}, {bias.device}")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError("fused_linear_act runs on CUDA tensors, or on the CPU under Triton's interpreter "
                         "(set TRITON_INTERPRET=1 before triton is imported); reference_linear_act runs anywhere")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} is {t.dtype}: fused_linear_act takes float32 or bfloat16")
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


def _forward(x, weight, bias, leak, sub, maxv, hist_bins, hist_max, allow_tf32, save_code):
    G, M, N, K = _shapes(x, weight, bias)
    tiles = _tiles(M, N, K)
    tiles_m, tiles_n = triton.cdiv(M, tiles["BLOCK_M"]), triton.cdiv(N, tiles["BLOCK_N"])
    device = x.device

    y = torch.empty((G, M, N), device=device, dtype=x.dtype)
    code = torch.empty((G, M, N), device=device, dtype=torch.int8) if save_code else y
    part_sum = torch.empty((G, tiles_m * tiles_n), device=device, dtype=torch.float32)
    part_sumsq = torch.empty_like(part_sum)
    part_hist = torch.empty((G, tiles_m * tiles_n, hist_bins), device=device, dtype=torch.int32)
    part_pos = torch.empty((G, tiles_m, N), device=device, dtype=torch.int32)

    x_strides = (0, *x.stride()) if x.dim() == 2 else x.stride()
    _fused_linear_act_fwd[(tiles_m * tiles_n, G)](
        x, weight, bias, y, code, leak, sub, maxv if maxv is not None else leak,
        part_sum, part_sumsq, part_hist, part_pos,
        M, N, K,
        *x_strides, *weight.stride(), *bias.stride(),
        hist_bins / hist_max, hist_max,
        HAS_MAXV=maxv is not None, SAVE_CODE=save_code, HIST_BINS=hist_bins,
        HIST_BINS_POW2=triton.next_power_of_2(hist_bins),
        INPUT_PRECISION="tf32" if allow_tf32 else "ieee",
        **tiles,
    )
    # Second stage: fixed-order reductions of the per-tile partials.
    stats = (part_sum.double().sum(1).float(), part_sumsq.double().sum(1).float(),
             part_hist.sum(1, dtype=torch.int64), part_pos.sum(1, dtype=torch.int64))
    return y, (code if save_code else None), stats


def _act_grad_launch(dy: torch.Tensor, code: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
    G, M, N = dy.shape
    dy = dy.contiguous()
    dz = torch.empty_like(dy)
    block = triton.next_power_of_2(M * N) if interpreting() else 1024
    block = min(block, 1 << 16)
    _act_grad[(triton.cdiv(M * N, block), G)](dy, code, leak, dz, M * N, BLOCK=block)
    return dz


class FusedLinearActFunction(torch.autograd.Function):
    """Batched form: x (M, K) or (G, M, K), weight (G, N, K), bias (G, N), leak/sub/maxv (G,)
    float32 (maxv may be None). Returns y (G, M, N) and the statistics (not differentiable)."""

    @staticmethod
    def forward(ctx, x, weight, bias, leak, sub, maxv, hist_bins, hist_max, allow_tf32):
        save_code = any(ctx.needs_input_grad[:3])
        y, code, stats = _forward(x, weight, bias, leak, sub, maxv, hist_bins, hist_max, allow_tf32, save_code)
        ctx.save_for_backward(x, weight, code, leak)
        ctx.mark_non_differentiable(*stats)
        return (y, *stats)

    @staticmethod
    def backward(ctx, dy, *unused_stat_grads):
        x, weight, code, leak = ctx.saved_tensors
        dz = _act_grad_launch(dy, code, leak)  # (G, M, N)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(dz, weight)  # (G, M, K)
            if x.dim() == 2:
                dx = dx.sum(0)  # x was shared by the G models
        if ctx.needs_input_grad[1]:
            xs = x.expand(dz.shape[0], *x.shape) if x.dim() == 2 else x
            dweight = torch.bmm(dz.transpose(1, 2), xs)  # (G, N, K)
        if ctx.needs_input_grad[2]:
            dbias = dz.sum(1)  # (G, N)
        return dx, dweight, dbias, None, None, None, None, None, None


def fused_linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, leak, sub, maxv=None, *,
                     hist_bins: int = 40, hist_max: float = 10.0,
                     allow_tf32: bool = False) -> tuple[torch.Tensor, LinearActStats]:
    """y = clamp_max(leaky_relu(x @ weight.T + bias, leak) - sub, maxv) and its statistics, in one
    kernel launch for all G models. See the module docstring for shapes and semantics."""
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
    leak_t = _per_model(leak, G, "leak", x.device)
    sub_t = _per_model(sub, G, "sub", x.device)
    maxv_t = None if maxv is None else _per_model(maxv, G, "maxv", x.device)
    y, total, total_sq, hist, unit_pos = FusedLinearActFunction.apply(
        x, weight, bias, leak_t, sub_t, maxv_t, hist_bins, hist_max, allow_tf32)
    stats = LinearActStats(total, total_sq, hist, unit_pos, M * N)
    if single:
        return y[0], LinearActStats(*(t[0] for t in stats[:4]), M * N)
    return y, stats


def reference_linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, leak, sub, maxv=None, *,
                         hist_bins: int = 40, hist_max: float = 10.0,
                         allow_tf32: bool = False) -> tuple[torch.Tensor, LinearActStats]:
    """The same computation in plain PyTorch, any dtype and device (float64 for checking).
    Differentiable through autograd; `allow_tf32` is accepted for a like-for-like call and ignored."""
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
        y = torch.minimum(y, per_model(maxv))
    with torch.no_grad():
        acc = torch.float64 if y.dtype == torch.float64 else torch.float32
        ya = y.detach().to(acc)
        stats = LinearActStats(
            sum=ya.sum((1, 2)).float(), sumsq=(ya * ya).sum((1, 2)).float(),
            hist=torch.stack([torch.histc(ya[g].abs(), hist_bins, 0, hist_max) for g in range(G)]).long(),
            unit_pos=(z > 0).sum(1), count=M * N,
        )
    if single:
        return y[0], LinearActStats(*(t[0] for t in stats[:4]), M * N)
    return y, stats
