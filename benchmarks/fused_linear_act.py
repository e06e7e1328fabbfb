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
ROUND_TRIP_SECONDS = 0.7e-6  # one dependent trip to global memory (an assumption, see README)


@dataclass
class Prediction:
    """Device seconds of one forward of G models, fused and bare, from FLOPs, bytes and occupancy."""

    fused_seconds: float
    gemm_seconds: float
    ctas: int  # programs of the fused forward's grid
    tile: tuple[int, int]

    @property
    def ratio(self) -> float:
        return self.fused_seconds / self.gemm_seconds


def predict(G: int, precision: str = "ieee", shared_x: bool = True, tile: tuple[int, int] = (64, 64),
            shape: tuple[int, int, int] = (M, K, N)) -> Prediction:
    """The forward of a (M, K) @ (K, N) layer, by default the target shape: time = max(FLOPs / (peak x occupancy), bytes / bandwidth) +
    launches x LAUNCH_SECONDS. Occupancy: the grid's programs over whole waves of 132 SMs (one
    program per SM at these tiles). The fused kernel moves y, a one-byte code per element and its
    per-tile slots besides what the GEMM moves, and is one launch (tests/test_fused_linear_act.py
    counts it); the merge adds, after the last tile, the ticket's and the slot reads' dependent
    round trips to memory (1 + ceil(tiles / 64) + ceil(row tiles / 16) at N <= 256). Host time
    (Python, the launcher) is not predicted: the benchmark measures it as the difference between its
    do_bench and CUDA-graph columns."""
    M, K, N = shape
    flops = 2.0 * G * M * N * K
    x_bytes = (1 if shared_x else G) * M * K * 4
    gemm_bytes = x_bytes + G * (N * K + N) * 4 + G * M * N * 4
    tiles = math.ceil(M / tile[0]) * math.ceil(N / tile[1])
    slots = G * tiles * (3 * 4 + 64 * 4) + G * math.ceil(M / tile[0]) * N * 4
    fused_bytes = gemm_bytes + G * M * N + slots

    def seconds(n_bytes: float, ctas: int, launches: int) -> float:
        occupancy = ctas / (math.ceil(ctas / H100_SMS) * H100_SMS)
        return max(flops / (H100_FLOPS[precision] * occupancy), n_bytes / H100_BANDWIDTH) + launches * LAUNCH_SECONDS

    # cuBLAS picks its own tiles; at G = 1 it fills the SMs (split-K or smaller tiles): occupancy 1.
    gemm_ctas = max(G * tiles, H100_SMS)
    merge = (1 + math.ceil(tiles / 64) + math.ceil(M / tile[0] / 16)) * ROUND_TRIP_SECONDS
    return Prediction(seconds(fused_bytes, G * tiles, 1) + merge, seconds(gemm_bytes, gemm_ctas, 1), G * tiles, tile)


def autotuned_tiles() -> list[tuple[int, int]]:
    """(rows, units) of the kernel's autotuned set, each once."""
    from study.model import fused_kernel  # the entry point chose the interpreter where there is no GPU

    return sorted({(c.kwargs["BLOCK_R"], c.kwargs["BLOCK_C"]) for c in fused_kernel().CONFIGS})


def best_prediction(G: int, precision: str, shared_x: bool = True, shape: tuple[int, int, int] = (M, K, N)) -> Prediction:
    """The tile the autotuner would keep if the model were the machine."""
    return min((predict(G, precision, shared_x, tile, shape) for tile in autotuned_tiles()),
               key=lambda p: p.fused_seconds)


def prediction_table() -> str:
    rows = ["| case | precision | tile | fused programs | predicted fused us | predicted bare GEMM us | "
            "predicted ratio | target |", "|---|---|---|---|---|---|---|---|"]
    for G in (1, 64):
        for precision in ("ieee", "tf32"):
            p = best_prediction(G, precision)
            rows.append(f"| forward G={G} | {precision} | {p.tile[0]}x{p.tile[1]} | {p.ctas} | {p.fused_seconds * 1e6:.1f} | "
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


def layer_cases(G: int, device: str = "cuda") -> dict:
    """The four layer callables for G models at the target shape, on `device` (the CPU under the
    interpreter in tests): fused and bare forward, fused and bare backward. The bare backward gets
    the same dz the fused one forms from dy and the slope code, so both compute the same gradients."""
    from kernels.fused_linear_act import ACTIVATIONS, _backward_op, fused_linear_act, matmul_precision

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(M, K, device=device, generator=gen)
    w = torch.randn(G, N, K, device=device, generator=gen) / K ** 0.5
    b = torch.zeros(G, N, device=device)
    dy = torch.randn(G, M, N, device=device, generator=gen)
    code = torch.randint(0, 3, (G, M, N), device=device, dtype=torch.int8, generator=gen)
    leak = 0.1
    dz = dy * torch.where(code == 1, 1.0, torch.where(code == 0, leak, 0.0))
    dz_by_row = dz.permute(1, 0, 2).reshape(M, G * N)  # dx = sum_g dz[g] @ w[g] as one GEMM
    precision = matmul_precision(None, torch.float32)
    x_g = x.expand(G, M, K)
    trainable = w.clone().requires_grad_()  # so the forward saves its slope code, as in training

    def bare_forward():
        return torch.addmm(b[0], x, w[0].T) if G == 1 else torch.baddbmm(b.unsqueeze(1), x_g, w.transpose(1, 2))

    def bare_backward():
        return torch.mm(dz_by_row, w.reshape(G * N, K)), torch.bmm(dz.transpose(1, 2), x_g)

    return {
        "fused forward": lambda: fused_linear_act(x, trainable, b, leak, 0.4),
        "bare forward": bare_forward,
        "fused backward": lambda: _backward_op(dy, x, w, code, leak, None, True, True, True, precision,
                                               ACTIVATIONS["general_relu"]),
        "bare backward": bare_backward,
    }


def training_cases(device: str = "cuda") -> dict:
    """One SGD step of the MLP: the kernel (its statistics every step) and eager PyTorch with the
    lesson's hooks (mean, std and histc(40, 0, 10) of each activation, left on the device).
    Returns each step's losses list too, for tests that compare the two."""
    from torch.nn import functional as F

    from study.config import ModelConfig
    from study.model import activations, build_model
    from study.stats import StatsRecorder

    config = ModelConfig(model="mlp")
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(M, 1, 28, 28, device=device, generator=gen)
    labels = torch.randint(0, 10, (M,), device=device, generator=gen)
    steps = {}
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        model = build_model(config, backend).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.85)
        recorded = []
        if backend == "triton":
            recorder = StatsRecorder(activations(model)).__enter__()  # hooks kept for the benchmark's life
            recorder.recording = True
        else:
            for module in activations(model):
                module.register_forward_hook(lambda m, i, out, recorded=recorded: recorded.append(
                    (out.mean(), out.std(), out.abs().histc(HIST_BINS, 0, HIST_MAX))))

        def step(model=model, optimizer=optimizer, recorded=recorded):
            optimizer.zero_grad(set_to_none=False)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            recorded.clear()
            return loss
        steps[backend] = step
    return {"fused step": steps["triton"], "eager step": steps["torch"]}


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
        cases = layer_cases(G)
        row(f"forward G={G}", cases["fused forward"], cases["bare forward"])
        row(f"backward G={G}", cases["fused backward"], cases["bare backward"])
    steps = training_cases()
    row("MLP training step", steps["fused step"], steps["eager step"])
    return "\n".join(rows)


def compile_check() -> str:
    """Whether torch.compile (fullgraph) captures the registered op, forward and backward, and
    gives eager's numbers: one line for the report."""
    from kernels.fused_linear_act import fused_linear_act

    def loss(x, w, b):
        y, stats = fused_linear_act(x, w, b, 0.1, 0.4)
        return (y * y).mean(), stats.var

    x = torch.randn(M, K, device="cuda")
    w = (torch.randn(2, N, K, device="cuda") / K ** 0.5).requires_grad_()
    b = torch.zeros(2, N, device="cuda", requires_grad=True)
    try:
        eager, eager_var = loss(x, w, b)
        eager_grad = torch.autograd.grad(eager, w)[0]
        compiled, compiled_var = torch.compile(loss, fullgraph=True)(x, w, b)
        compiled_grad = torch.autograd.grad(compiled, w)[0]
    except Exception as error:  # noqa: BLE001 - the report says what failed
        return f"torch.compile (fullgraph): FAILED, {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    same = (torch.allclose(eager, compiled, rtol=1e-5) and torch.equal(eager_var, compiled_var)
            and torch.allclose(eager_grad, compiled_grad, rtol=1e-4, atol=1e-6))
    return f"torch.compile (fullgraph): captured; {'equals eager' if same else 'DIFFERS FROM EAGER'}"


def report() -> str:
    precision = torch.get_float32_matmul_precision()
    lines = [f"fused_linear_act benchmark, {datetime.date.today().isoformat()}, {platform.node()}, "
             f"torch {torch.__version__}, float32 matmul precision {precision!r}",
             f"shape: x ({M}, {K}) shared, weight (G, {N}, {K}), float32"]
    if torch.cuda.is_available():
        import triton
        lines += [f"device: {torch.cuda.get_device_name()}, triton {triton.__version__}", "", gpu_table(), "",
                  compile_check()]
    else:
        lines += ["device: no CUDA GPU here: NO GPU TIMING WAS TAKEN."]
    lines += ["", "prediction for an H100 SXM (a model, not a measurement; kernels/README.md):", "",
              prediction_table()]
    return "\n".join(lines)
