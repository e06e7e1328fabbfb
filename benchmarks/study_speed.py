"""How fast a study's trainings run: one table of model-epochs per second, peak memory and FLOP rate.

Rows, for the MLP and the lesson's CNN (one epoch of FashionMNIST each, warm-up excluded):
  (a) lesson-style loop: DataLoader, forward hooks with mean, std and `abs().histc(40, 0, 10)` every batch
  (b) this project's single-model `train`, statistics every step
  (c) the same without statistics (recorded at step 0 only)
  (d) population training of G models at once, statistics every step
  (e) (b) under bfloat16 autocast, where the device supports it
and a bare `torch.mm` of the MLP's first layer measured in the same run: the GEMM rate the rows'
GFLOP/s are compared with. Each row runs in a fresh process, so its peak memory is its own.

    python -m study bench study [--device auto] [--models mlp,cnn] [--rows a,b,c,d8,d32,e,quick]

(`quick`: the quick study against plain PyTorch epochs, `benchmarks/quick_study.py`.)
"""

from __future__ import annotations

import datetime
import itertools
import multiprocessing
import os
import platform
import resource
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from benchmarks.fused_linear_act import best_prediction
from kernels import activation_stats_cpu
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.data import load_fashion_mnist
from study.model import CNN_CHANNELS, IMAGE_PIXELS, N_CLASSES, activations, build_model, init_weights
from study.population import train_population
from study.stats import HIST_BINS, HIST_MAX
from study.training import device_name, make_optimizer, resolve_device, train

ROW_NAMES = {
    "a": "(a) lesson-style loop: DataLoader + histc hooks",
    "b": "(b) single model, statistics every step",
    "c": "(c) single model, no statistics",
    "d8": "(d) population G=8, statistics every step",
    "d32": "(d) population G=32, statistics every step",
    "e": "(e) single model, bfloat16 autocast, statistics",
}
ROWS = tuple(ROW_NAMES)
N_TRAIN = 50_000


@dataclass
class Measured:
    models: int  # trained at once
    seconds: float  # one epoch of all of them
    peak_mb: float

    @property
    def model_epochs_per_second(self) -> float:
        return self.models / self.seconds


def run_config(model: str, device: str, **train) -> RunConfig:
    """The study's defaults for `model`: GeneralRelu(.1, .4), Kaiming, lr 0.1 (trains, both models)."""
    return RunConfig(model=ModelConfig(model=model), optim=OptimConfig(lr=0.1),
                     train=TrainConfig(device=device, **train))


def train_flops(model: str) -> float:
    """FLOPs of one epoch of training (forward + backward = 3x the forward GEMMs/convolutions)."""
    if model == "mlp":
        widths = (IMAGE_PIXELS, *ModelConfig().widths, N_CLASSES)
        per_image = sum(2 * a * b for a, b in zip(widths, widths[1:]))
    else:
        per_image, size = 0, 28
        for n_in, n_out in zip(CNN_CHANNELS, (*CNN_CHANNELS[1:], N_CLASSES)):
            size = (size + 1) // 2
            per_image += 2 * n_in * 9 * n_out * size * size
    return 3.0 * per_image * N_TRAIN


def lesson_loop(config: RunConfig, data, max_steps: int | None = None) -> None:
    """The notebook way: a DataLoader of the tensors, and hooks that keep every batch's statistics."""
    model = build_model(config.model).to(data.x_train.device)
    init_weights(model, config.model, torch.Generator().manual_seed(0))
    kept = []

    def hook(module, inputs, out):
        kept.append((out.mean(), out.std(), out.abs().histc(HIST_BINS, 0, HIST_MAX)))

    handles = [m.register_forward_hook(hook) for m in activations(model)]
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=config.optim.batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(1))
    optimizer, _ = make_optimizer(model.parameters(), config.optim, len(loader))
    for xb, yb in itertools.islice(loader, max_steps):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for handle in handles:
        handle.remove()


def measure_row(model: str, row: str, device: str) -> Measured:
    """Seconds of one epoch of `row` after a few warm-up steps (the fastest of three for one model),
    in this process."""
    data = load_fashion_mnist(DataConfig(), resolve_device(device))
    no_stats = 10 ** 9
    size = int(row[1:]) if row.startswith("d") else 1
    configs = [run_config(model, device, seed=seed, stats_every=no_stats if row == "c" else 1,
                          dtype="bfloat16" if row == "e" else "float32") for seed in range(size)]

    def run(max_steps: int | None) -> None:
        runs = [replace(c, train=replace(c.train, max_steps=max_steps)) for c in configs]
        if row == "a":
            lesson_loop(runs[0], data, max_steps)
        elif size > 1:
            train_population(runs, data)
        else:
            train(runs[0], data)

    run(max_steps=3)  # warm-up: allocator, oneDNN primitives, CUDA kernels
    seconds = []
    for _ in range(1 if size > 1 else 3):  # the best of three where a run is short: this VM is noisy
        with _Timer(device) as timer:
            run(max_steps=None)
        seconds.append(timer.seconds)
    return Measured(size, min(seconds), _peak_mb(device))


def bare_mm_gflops(device: str) -> float:
    """The MLP first layer's GEMM (1024x784 @ 784x256), timed bare: the rate to compare with."""
    dev = resolve_device(device)
    x, w = torch.randn(1024, IMAGE_PIXELS, device=dev), torch.randn(IMAGE_PIXELS, 256, device=dev)
    for _ in range(20):
        torch.mm(x, w)
    repeats = 200
    with _Timer(device) as timer:
        for _ in range(repeats):
            torch.mm(x, w)
    return 2.0 * 1024 * IMAGE_PIXELS * 256 * repeats / timer.seconds / 1e9


def bf16_supported(device: str) -> bool:
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def gpu_population_prediction() -> str:
    """The kernel's H100 model (benchmarks/fused_linear_act.py): per-model device time of the MLP's
    fused hidden layers at G=1 and G=32 (forward, IEEE float32, each seed its own batch); the ratio
    is the predicted population speed-up there."""
    def per_model(G: int) -> float:
        first = best_prediction(G, "ieee", shared_x=False, shape=(1024, IMAGE_PIXELS, 256))
        hidden = best_prediction(G, "ieee", shared_x=False, shape=(1024, 256, 256))
        return (first.fused_seconds + 2 * hidden.fused_seconds) / G

    return (f"PREDICTION (not measured; the H100 model of benchmarks/fused_linear_act.py, device time only): "
            f"the MLP's fused hidden layers take {per_model(1) * 1e6:.1f} us per model per step alone and "
            f"{per_model(32) * 1e6:.1f} us in a population of 32: {per_model(1) / per_model(32):.1f}x "
            f"fewer GPU-seconds per model, the SMs part-filled alone, full together.")


def table(results: dict[tuple[str, str], Measured], mm_gflops: float) -> str:
    lines = ["| model | row | model-epochs/s | x (a) | x (b) | peak memory MB | GFLOP/s | % of bare mm |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, row), m in results.items():
        rate = m.model_epochs_per_second
        gflops = train_flops(model) * rate / 1e9
        base_a, base_b = results.get((model, "a")), results.get((model, "b"))
        lines.append(f"| {model} | {ROW_NAMES[row]} | {rate:.3f} | {_ratio(rate, base_a)} | {_ratio(rate, base_b)} | "
                     f"{m.peak_mb:.0f} | {gflops:.1f} | {100 * gflops / mm_gflops:.0f}% |")
    return "\n".join(lines)


def _ratio(rate: float, base: Measured | None) -> str:
    return f"{rate / base.model_epochs_per_second:.2f}" if base else "-"


def header(device: str) -> str:
    statistics = ("the C loop (kernels/activation_stats_cpu.c)" if activation_stats_cpu.available()
                  else "PyTorch passes (the C loop could not be built)")
    return (f"{datetime.date.today()}, {device_name(resolve_device(device))}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, "
            f"Python {platform.python_version()}; one epoch = 50,000 FashionMNIST images, batch 1024; "
            f"statistics on the CPU: {statistics}")


def report(device: str = "auto", models: tuple[str, ...] = ("mlp", "cnn"), rows: tuple[str, ...] = ROWS,
           progress: bool = True) -> str:
    """The benchmark's table, each row measured in a fresh process (spawned, so that its peak memory
    and its allocator are its own); row e only where bfloat16 runs natively."""
    rows = tuple(r for r in rows if r != "e" or bf16_supported(device))
    jobs = [(model, row) for model in models for row in rows]
    results = {}
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for model, row in tqdm(jobs, desc="bench", unit="row", disable=not progress):
            results[(model, row)] = pool.apply(measure_row, (model, row, device))
    mm_gflops = bare_mm_gflops(device)
    return "\n".join([header(device), "", table(results, mm_gflops), "",
                      f"bare torch.mm 1024x784 @ 784x256: {mm_gflops:.0f} GFLOP/s", gpu_population_prediction()])


class _Timer:
    """Wall time of a block; on CUDA between two events, after the work queued before it."""

    def __init__(self, device: str):
        self.cuda = resolve_device(device).type == "cuda"

    def __enter__(self) -> "_Timer":
        if self.cuda:
            torch.cuda.synchronize()
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end_event.record()
            torch.cuda.synchronize()
            self.seconds = self.start_event.elapsed_time(self.end_event) / 1e3
        else:
            self.seconds = time.perf_counter() - self.start


def _peak_mb(device: str) -> float:
    if resolve_device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # KiB on Linux
