"""Benchmark of fused_linear_act against its targets: GPU timings where CUDA exists, a labelled
prediction always.

The targets (kernels/README.md), at the MLP's first layer M = 1024, K = 784, N = 256, float32 inputs,
the kernel and cuBLAS at one precision (whatever torch.get_float32_matmul_precision() says; the
kernel follows it):
- forward with statistics <= 1.25x the bare GEMM (`torch.addmm`) at G = 1, <= 1.15x per model at
  G = 64 (against `torch.baddbmm` of the 64 models, x shared as in the population's first layer);
- backward (dx, dweight, dbias) <= 1.3x the two bare GEMMs dz @ W and dz.T @ x (dz given);
- a training step of the 784-256-256-256-10 MLP with the kernel (statistics every step) faster than
  eager PyTorch with the lesson's hook statistics (mean, std, histc of each activation, on the GPU).

On CUDA each case is timed twice: `triton.testing.do_bench` (median ms, host overhead included: what
a Python caller pays) and `do_bench_cudagraph` (the same calls replayed from a CUDA graph: device
time alone). The first call of each shape autotunes (the kernel's tile set) before any timing.
Without CUDA no time is taken and the table holds the model's prediction, labelled so.
"""

from __future__ import annotations

import datetime
import math
import platform
from dataclasses import dataclass

import torch

from study.stats import HIST_BINS, HIST_MAX

M, K, N = 1024, 784, 256  # the MLP's first layer at the lesson's batch size
TARGETS = {"forward G=1": 1.25, "forward G=64": 1.15, "backward G=1": 1.3, "backward G=64": 1.3,
           "MLP training step": 1.0}

# The prediction's machine: an H100 SXM (spec sheet figures, not measurements).
H100_SMS = 132
H100_BANDWIDTH = 3.35e12  # bytes/s, HBM3
H100_FLOPS = {"ieee": 67e12, "tf32": 495e12}  # float32 FMA pipes; dense TF32 tensor cores
LAUNCH_SECONDS = 3e-6  # launch and tail of one kernel on a busy stream (an assumption, see README)
TILE = (64, 64)  # a mid-sized tile of the autotuned set, for the occupancy estimate


@dataclass
class Prediction:
    """Device seconds of one forward of G models, fused and bare, from FLOPs, bytes and occupancy."""

    fused_seconds: float
    gemm_seconds: float
    ctas: int  # programs of the fused forward's grid

    @property
    def ratio(self) -> float:
        return self.fused_seconds / self.gemm_seconds


def predict(G: int, precision: str = "ieee", shared_x: bool = True) -> Prediction:
    """The forward at the target shape: time = max(FLOPs / (peak x occupancy), bytes / bandwidth) +
    launches x LAUNCH_SECONDS. Occupancy: the grid's programs over whole waves of 132 SMs (one
    program per SM at these tiles). The fused kernel moves y, a one-byte code per element and its
    per-tile slots besides what the GEMM moves, and is one launch (tests/test_fused_linear_act.py
    counts it); its merge adds one program's read of the slots at the end."""
    flops = 2.0 * G * M * N * K
    x_bytes = (1 if shared_x else G) * M * K * 4
    gemm_bytes = x_bytes + G * (N * K + N) * 4 + G * M * N * 4
    tiles = math.ceil(M / TILE[0]) * math.ceil(N / TILE[1])
    slots = G * tiles * (3 * 4 + 64 * 4) + G * math.ceil(M / TILE[0]) * N * 4
    fused_bytes = gemm_bytes + G * M * N + slots

    def seconds(n_bytes: float, ctas: int, launches: int) -> float:
        occupancy = ctas / (math.ceil(ctas / H100_SMS) * H100_SMS)
        return max(flops / (H100_FLOPS[precision] * occupancy), n_bytes / H100_BANDWIDTH) + launches * LAUNCH_SECONDS

    # cuBLAS picks its own tiles; at G = 1 it fills the SMs (split-K or smaller tiles): occupancy 1.
    gemm_ctas = max(G * tiles, H100_SMS)
    merge = tiles * (3 * 4 + 64 * 4) / H100_BANDWIDTH * H100_SMS  # one SM reads the slots: 1/132 of bandwidth
    return Prediction(seconds(fused_bytes, G * tiles, 1) + merge, seconds(gemm_bytes, gemm_ctas, 1), G * tiles)


def prediction_table() -> str:
    rows = ["| case | precision | fused programs | predicted fused us | predicted bare GEMM us | "
            "predicted ratio | target |", "|---|---|---|---|---|---|---|"]
    for G in (1, 64):
        for precision in ("ieee", "tf32"):
            p = predict(G, precision)
            rows.append(f"| forward G={G} | {precision} | {p.ctas} | {p.fused_seconds * 1e6:.1f} | "
                        f"{p.gemm_seconds * 1e6:.1f} | {p.ratio:.2f}x | <= {TARGETS[f'forward G={G}']}x |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# GPU timings


def _time(fn) -> tuple[float, float | None]:
    """(host-inclusive ms, CUDA-graph ms or None where the calls cannot be captured)."""
    import triton.testing

    fn()  # autotuning and compilation happen here, outside any timing or capture
    torch.cuda.synchronize()
    host = triton.testing.do_bench(fn)
    try:
        graph = triton.testing.do_bench_cudagraph(fn)
    except Exception:  # noqa: BLE001 - a capture failure is a finding for the table, not an error
        graph = None
    return host, graph


def _layer_cases(G: int):
    """(fused forward, bare forward, fused backward, bare backward) callables for G models."""
    from kernels.fused_linear_act import _backward_op, fused_linear_act, matmul_precision

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=gen)
    w = torch.randn(G, N, K, device="cuda", generator=gen) / K ** 0.5
    b = torch.zeros(G, N, device="cuda")
    dy = torch.randn(G, M, N, device="cuda", generator=gen)
    code = torch.randint(0, 3, (G, M, N), device="cuda", dtype=torch.int8, generator=gen)
    dz = dy * 0.5
    precision = matmul_precision(None, torch.float32)
    x_g = x.expand(G, M, K)
    wg = w.requires_grad_()

    def fused_forward():
        return fused_linear_act(x, wg, b, 0.1, 0.4)

    def bare_forward():
        return torch.addmm(b[0], x, w[0].T) if G == 1 else torch.baddbmm(b.unsqueeze(1), x_g, w.transpose(1, 2))

    def fused_backward():  # dweight, dbias and a dx summed over the models (x is shared)
        return _backward_op(dy, x, w, code, 0.1, None, True, True, True, precision)

    def bare_backward():
        if G == 1:
            return torch.mm(dz[0], w[0]), torch.mm(dz[0].T, x)
        return torch.bmm(dz, w).sum(0), torch.bmm(dz.transpose(1, 2), x_g)

    return fused_forward, bare_forward, fused_backward, bare_backward


def _training_cases():
    """One SGD step of the MLP: the kernel (its statistics every step) and eager PyTorch with the
    lesson's hooks (mean, std and histc(40, 0, 10) of each activation, left on the GPU)."""
    from torch.nn import functional as F

    from study.config import ModelConfig
    from study.model import activations, build_model
    from study.stats import StatsRecorder

    config = ModelConfig(model="mlp")
    images = torch.randn(M, 1, 28, 28, device="cuda")
    labels = torch.randint(0, 10, (M,), device="cuda")
    steps = {}
    for backend in ("triton", "torch"):
        model = build_model(config, backend).cuda()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.85)
        recorded = []
        if backend == "triton":
            recorder = StatsRecorder(activations(model)).__enter__()  # kept for the benchmark's life
            recorder.recording = True
        else:
            for module in activations(model):
                module.register_forward_hook(lambda m, i, out: recorded.append(
                    (out.mean(), out.std(), out.abs().histc(HIST_BINS, 0, HIST_MAX))))

        def step(model=model, optimizer=optimizer, recorded=recorded):
            optimizer.zero_grad(set_to_none=False)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            recorded.clear()
        steps[backend] = step
    return steps["triton"], steps["torch"]


def gpu_table() -> str:
    rows = ["| case | fused ms | bare/eager ms | ratio | fused ms (graph) | bare/eager ms (graph) | "
            "ratio (graph) | target |", "|---|---|---|---|---|---|---|---|"]

    def row(case: str, ours, theirs) -> None:
        (host, graph), (host_ref, graph_ref) = _time(ours), _time(theirs)
        graphed = (f"{graph:.4f} | {graph_ref:.4f} | {graph / graph_ref:.2f}x" if graph and graph_ref
                   else "not captured | not captured | -")
        rows.append(f"| {case} | {host:.4f} | {host_ref:.4f} | {host / host_ref:.2f}x | {graphed} | "
                    f"<= {TARGETS[case]}x |")

    for G in (1, 64):
        fused_forward, bare_forward, fused_backward, bare_backward = _layer_cases(G)
        row(f"forward G={G}", fused_forward, bare_forward)
        row(f"backward G={G}", fused_backward, bare_backward)
    row("MLP training step", *_training_cases())
    return "\n".join(rows)


def report() -> str:
    precision = torch.get_float32_matmul_precision()
    lines = [f"fused_linear_act benchmark, {datetime.date.today().isoformat()}, {platform.node()}, "
             f"torch {torch.__version__}, float32 matmul precision {precision!r}",
             f"shape: x ({M}, {K}) shared, weight (G, {N}, {K}), float32"]
    if torch.cuda.is_available():
        import triton
        lines += [f"device: {torch.cuda.get_device_name()}, triton {triton.__version__}", "", gpu_table()]
    else:
        lines += ["device: no CUDA GPU here: NO GPU TIMING WAS TAKEN."]
    lines += ["", "prediction for an H100 SXM (a model, not a measurement; kernels/README.md):", "",
              prediction_table()]
    return "\n".join(lines)
