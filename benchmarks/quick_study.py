"""The quick study against plain PyTorch epochs (the issue "Speed"'s yardstick), in one run:

- a plain epoch: the lesson's CNN with nn.ReLU, no statistics, no hooks, one epoch of random data of
  FashionMNIST's shape (50,000 images, batch 1024), SGD, 2 threads; the best of 3 after a warm-up;
- the quick study: `python -m study search --workers auto --device cpu` in an empty directory, a fresh
  process as a user runs it; its wall time, in plain epochs, and the share of its workers' time (workers x wall)
  spent outside the seeds' own training (their records' `seconds`: set-up, training and scoring).

    python -m study bench study --rows quick
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from study.model import CNN_CHANNELS, CONV, N_CLASSES

N_TRAIN, BATCH = 50_000, 1024


@dataclass
class QuickStudy:
    wall: float  # seconds, the command from start to exit
    workers: int
    training: float  # the seeds' own seconds, summed


def plain_cnn() -> nn.Sequential:
    sizes = (*CNN_CHANNELS, N_CLASSES)
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Conv2d(n_in, n_out, **CONV))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers, nn.Flatten())


def plain_epoch_seconds(threads: int = 2, repeats: int = 3) -> float:
    """The fastest of `repeats` plain epochs, after three warm-up steps."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 1, 28, 28, generator=generator)
    y = torch.randint(0, N_CLASSES, (N_TRAIN,), generator=generator)
    model = plain_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def epoch(steps: int | None = None) -> None:
        for start in range(0, N_TRAIN, BATCH)[:steps]:
            loss = F.cross_entropy(model(x[start:start + BATCH]), y[start:start + BATCH])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    epoch(3)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def quick_study() -> QuickStudy:
    """The quick study in a fresh temporary directory, as `scripts/setup.sh` runs it."""
    from study import api
    from study.design import MachineConfig
    from study.results import training_minutes

    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        storage = f"sqlite:///{directory}/studies/quick.db"  # where it goes by default, whatever the environment
        done = subprocess.run([sys.executable, "-m", "study", "search", "--workers", "auto", "--device", "cpu",
                               "--storage", storage], cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"the quick study failed: {done.stderr.strip().splitlines()[-1:]}")
        wall = time.perf_counter() - start
        stored = api.load("quick", storage=storage)
        training = 60 * training_minutes(stored.optuna)
    return QuickStudy(wall, MachineConfig(workers="auto").worker_count("cpu"), training)


def quick_table(plain: float, quick: QuickStudy) -> str:
    outside = 1 - quick.training / (quick.workers * quick.wall)
    return "\n".join([
        "| the quick study (25 settings x 3 seeds, lesson CNN, one epoch) | seconds | plain epochs |",
        "|---|---|---|",
        f"| plain PyTorch epoch (lesson CNN, ReLU, random data, {torch.get_num_threads()} threads, best of 3) "
        f"| {plain:.2f} | 1 |",
        f"| `python -m study search --workers auto` ({quick.workers} workers), wall | {quick.wall:.1f} | "
        f"{quick.wall / plain:.0f} |",
        f"| - the seeds' own training (set-up, steps, scoring), summed | {quick.training:.1f} | |",
        f"| - workers' time outside it (1 - training / (workers x wall)) | {100 * outside:.0f}% | |",
    ])


def report() -> str:
    plain = plain_epoch_seconds()
    return quick_table(plain, quick_study())
