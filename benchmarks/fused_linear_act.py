"""Benchmark of fused_linear_act: GPU timings where CUDA exists, an analytic roofline model always.

On CUDA, median times (triton.testing.do_bench) of: the fused forward; fused forward + backward;
(a) eager PyTorch linear + GeneralRelu + the separate statistics ops; (b) torch.compile (default
mode: Inductor fuses the elementwise ops and reductions around cuBLAS's GEMM; max-autotune took
~45 s per shape on an H200, past the benchmark's budget) of (a); (c) the bare GEMM x @ W.T. Without CUDA no time is taken: the model predicts
them from bytes moved and FLOPs, for an H100 (3.35 TB/s HBM3, 495 TFLOP/s dense TF32).

The model counts compulsory DRAM traffic (every operand read once, every output written once;
re-reads of x and W tiles are served by the 50 MB L2, which holds all of them at these sizes), and
for the unfused version one read and one write of the activation per elementwise op, the way eager
PyTorch runs them. Time = max(FLOPs / peak, bytes / bandwidth) + launches x launch latency.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass

import torch

from study.stats import HIST_BINS

H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3
H100_TF32 = 495e12  # FLOP/s, dense TF32 tensor cores
LAUNCH_SECONDS = 4e-6  # one kernel launch and its tail, typical on H100 with CUDA graphs off
TILE_M, TILE_N = 64, 64  # the CUDA tiles of kernels.fused_linear_act._tiles

# Bytes per element of the (M, N) activation that the eager version moves, op by op (float32 = 4):
UNFUSED_PASSES = {
    "addmm writes z": 4,
    "leaky_relu reads z, writes": 8,
    "- sub reads, writes y": 8,
    "mean reads y": 4,
    "std reads y": 4,
    "abs reads y, writes |y|": 8,
    "histc reads |y|": 4,
    "z > 0 reads z, writes bool": 5,
    "sum over rows reads bool": 1,
}
UNFUSED_LAUNCHES = len(UNFUSED_PASSES)
FUSED_LAUNCHES = 5  # the kernel and the four fixed-order reductions of its partial statistics

SHAPES = [  # (label, M, K, N, x shared by the G models)
    ("MLP first layer", 1024, 784, 256, True),
    ("MLP hidden layer", 1024, 256, 256, False),
]
MODEL_COUNTS = (1, 8, 64)


@dataclass
class Prediction:
    flops: float
    fused_bytes: float
    unfused_bytes: float
    gemm_bytes: float

    def seconds(self, n_bytes: float, launches: int) -> float:
        return max(self.flops / H100_TF32, n_bytes / H100_BANDWIDTH) + launches * LAUNCH_SECONDS

    @property
    def fused_seconds(self) -> float:
        return self.seconds(self.fused_bytes, FUSED_LAUNCHES)

    @property
    def unfused_seconds(self) -> float:
        return self.seconds(self.unfused_bytes, UNFUSED_LAUNCHES)

    @property
    def gemm_seconds(self) -> float:
        return self.seconds(self.gemm_bytes, 1)


def predict(G: int, M: int, K: int, N: int, shared_x: bool, dtype_bytes: int = 4,
            training: bool = True) -> Prediction:
    """Analytic FLOPs and DRAM bytes of one forward of G models (see the module docstring)."""
    x_bytes = (1 if shared_x else G) * M * K * dtype_bytes
    w_bytes = G * (N * K + N) * dtype_bytes
    y_elements = G * M * N
    tiles = G * -(-M // TILE_M) * -(-N // TILE_N)
    partials = tiles * (2 + HIST_BINS) * 4 + G * -(-M // TILE_M) * N * 4
    gemm_bytes = x_bytes + w_bytes + y_elements * dtype_bytes
    return Prediction(
        flops=2.0 * G * M * N * K,
        fused_bytes=gemm_bytes + (y_elements if training else 0) + partials,  # + the one-byte slope code
        unfused_bytes=x_bytes + w_bytes + y_elements * sum(UNFUSED_PASSES.values()),
        gemm_bytes=gemm_bytes,
    )


def model_table() -> str:
    rows = ["| shape | G | GFLOP | fused MB | unfused MB | predicted fused us | predicted unfused us | "
            "predicted bare GEMM us | unfused / fused |", "|---|---|---|---|---|---|---|---|---|"]
    for label, M, K, N, shared in SHAPES:
        for G in MODEL_COUNTS:
            p = predict(G, M, K, N, shared)
            rows.append(f"| {label} {M}x{K} @ {K}x{N} | {G} | {p.flops / 1e9:.2f} | {p.fused_bytes / 1e6:.1f} | "
                        f"{p.unfused_bytes / 1e6:.1f} | {p.fused_seconds * 1e6:.1f} | {p.unfused_seconds * 1e6:.1f} | "
                        f"{p.gemm_seconds * 1e6:.1f} | {p.unfused_seconds / p.fused_seconds:.2f}x |")
    return "\n".join(rows)


def gpu_table() -> str:
    """Measured on this machine's GPU: median milliseconds and the achieved TFLOP/s and GB/s."""
    import triton.testing

    from kernels.fused_linear_act import fused_linear_act, reference_linear_act

    def eager(x, w, b):
        return reference_linear_act(x, w, b, 0.1, 0.4)

    compiled = torch.compile(eager)
    rows = ["| shape | G | fused fwd ms | fused fwd+bwd ms | eager+stats ms | compile ms | bare GEMM ms | "
            "fused TFLOP/s | fused GB/s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, M, K, N, shared in SHAPES:
        for G in MODEL_COUNTS:
            x = torch.randn((M, K) if shared else (G, M, K), device="cuda", requires_grad=True)
            w = (torch.randn(G, N, K, device="cuda") / K ** 0.5).requires_grad_()
            b = torch.zeros(G, N, device="cuda", requires_grad=True)

            def fused_fwd_bwd():
                y, _ = fused_linear_act(x, w, b, 0.1, 0.4)
                y.sum().backward()

            ms = {
                "fused": triton.testing.do_bench(lambda: fused_linear_act(x, w, b, 0.1, 0.4)),
                "fused_bwd": triton.testing.do_bench(fused_fwd_bwd),
                "eager": triton.testing.do_bench(lambda: eager(x, w, b)),
                "compiled": triton.testing.do_bench(lambda: compiled(x, w, b)),
                "gemm": triton.testing.do_bench(lambda: torch.matmul(x, w.transpose(1, 2))),
            }
            p = predict(G, M, K, N, shared)
            rows.append(f"| {label} | {G} | {ms['fused']:.3f} | {ms['fused_bwd']:.3f} | {ms['eager']:.3f} | "
                        f"{ms['compiled']:.3f} | {ms['gemm']:.3f} | {p.flops / ms['fused'] / 1e9:.1f} | "
                        f"{p.fused_bytes / ms['fused'] / 1e6:.0f} |")
    return "\n".join(rows)


def report() -> str:
    lines = [f"fused_linear_act benchmark, {datetime.date.today().isoformat()}, {platform.node()}, "
             f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        lines += [f"device: {torch.cuda.get_device_name()}", "", gpu_table()]
    else:
        lines += ["device: no CUDA GPU here: NO GPU TIMING WAS TAKEN. The table is the analytic model's "
                  "prediction for an H100 (3.35 TB/s, 495 TF32 TFLOP/s, 4 us per launch), float32 training forward."]
    lines += ["", "analytic model (prediction, not a measurement):", "", model_table()]
    return "\n".join(lines)
