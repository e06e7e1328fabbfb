"""Train one configuration on FashionMNIST and return a result record.

Training knows nothing of Optuna: `train(config)` returns a `TrainResult`; the search turns results
into trials. Same seed and configuration give the same result on the CPU (bitwise for accuracy).
A run whose loss turns NaN/inf or exceeds its limit (`TrainConfig.divergence_limit`) stops at once and comes back
with `diverged=True`: divergence is a finding, never an exception.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from study import interrupts
from study.config import OptimConfig, RunConfig
from study.data import FashionMNIST, load_fashion_mnist, shuffled_batches
from study.errors import BadInput
from study.model import activations, build_model, init_weights
from study.stats import LayerHistory, StatsRecorder

EVAL_BATCH = 2500  # images per forward pass when scoring; large to keep the pass count low


@dataclass
class TrainResult:
    config: dict  # RunConfig.to_dict()
    val_acc: float
    test_acc: float
    diverged: bool
    diverged_step: int | None  # the step whose loss crossed the bound, else None
    steps: int  # optimiser steps taken
    seconds: float  # wall time of training and scoring, without loading the data
    losses: list[float]  # training loss of every step taken
    layers: list[dict]  # per activation layer at the last recorded step: mean, std, near_zero_frac, dead_units, units
    history: list[LayerHistory] = field(repr=False)  # per layer, every recorded step
    epoch_val_acc: list[float] = field(default_factory=list)  # validation accuracy after each whole epoch

    def to_dict(self, with_history: bool = False) -> dict:
        record = asdict(self)
        if not with_history:
            del record["history"]
        return record

    def text(self) -> str:
        """The run for people: its configuration, outcome and each layer's statistics."""
        model, optim, run = self.config["model"], self.config["optim"], self.config["train"]
        status = f"DIVERGED at step {self.diverged_step}" if self.diverged else "trained"
        lines = [
            f"{model['model']}  GeneralRelu(leak={model['leak']}, sub={model['sub']}, maxv={model['maxv']})  "
            f"init {model['init']} x {model['init_scale']}  seed {run['seed']}",
            f"SGD lr {optim['lr']} momentum {optim['momentum']} ({optim['schedule']}"
            + (f", warm-up {optim['warmup_steps']} steps" if optim.get("warmup_steps") else "")
            + f"), batch {optim['batch_size']}, "
            f"{optim['epochs']} epoch(s): {status}",
            f"val acc {self.val_acc:.4f}   test acc {self.test_acc:.4f}   "
            f"{self.steps} steps in {self.seconds:.1f} s",
            "",
            f"{'layer':>5} {'units':>5} {'mean':>8} {'std':>8} {'near-zero':>9} {'dead units':>10}",
        ]
        for index, layer in enumerate(self.layers, start=1):
            lines.append(f"{index:>5} {layer['units']:>5} {layer['mean']:>8.3f} {layer['std']:>8.3f} "
                         f"{layer['near_zero_frac']:>9.3f} {layer['dead_units']:>10}")
        return "\n".join(lines)


# --dtype -> the dtype of weights and data (bfloat16 autocasts the compute, weights stay float32)
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.float32, "float64": torch.float64}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def training_steps(epochs: int, epoch_batches: Callable[[], Iterable], total_steps: int,
                   end_of_epoch: Callable[[], None]) -> Iterator[tuple[int, object]]:
    """(step, batch) for every optimiser step of `epochs` passes, at most `total_steps` of them;
    `end_of_epoch()` after each pass that ran to its end (the validation score of that epoch).

    `epoch_batches()` gives one pass's batches. A caller that stops early (a diverged loss) breaks
    out of its loop: the generator is closed there, so a pass cut short is not scored as an epoch.
    Before each step, a stop request (Ctrl-C) raises `Interrupted`: the run in flight is dropped.
    """
    step = 0
    for _ in range(epochs):
        for batch in epoch_batches():
            if step == total_steps:
                return
            interrupts.check()
            yield step, batch
            step += 1
        end_of_epoch()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo: what timings and findings cite."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def prepare_data(config: RunConfig, data: FashionMNIST | None) -> tuple[torch.device, FashionMNIST]:
    """The run's device and its data there, in the run's dtype."""
    device = resolve_device(config.train.device)
    if data is None:
        data = load_fashion_mnist(config.data, device)
    dtype = WEIGHT_DTYPES[config.train.dtype]
    if data.x_train.dtype != dtype:
        data = data.to(device, dtype)
    return device, data


def autocast(config: RunConfig, device: torch.device):
    """bfloat16 autocast for `--dtype bfloat16`, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.dtype == "bfloat16")


def step_count(config: RunConfig, n_train: int) -> int:
    total = math.ceil(n_train / config.optim.batch_size) * config.optim.epochs
    return total if config.train.max_steps is None else min(total, config.train.max_steps)


def is_diverged(loss: float, first_loss: float, config: RunConfig) -> bool:
    """Whether a run whose first training loss was `first_loss` has diverged at `loss`
    (`TrainConfig.divergence_limit`)."""
    return not math.isfinite(loss) or loss > config.train.divergence_limit(first_loss)


def seed_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The generators of seed `seed`: of its initial weights, and of its data order. Two, so that the
    seed changes both, and a run and a population member of one seed draw the same."""
    return torch.Generator().manual_seed(2 * seed), torch.Generator().manual_seed(2 * seed + 1)


def optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """One step of every run, a single model's or a population's: gradients of `loss` (a population's
    is the sum of its members', so each member gets its own), SGD, the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def initial_model(config: RunConfig, data: FashionMNIST, device: torch.device) -> tuple[nn.Module, torch.Generator]:
    """The untrained model of `config.train.seed` on `device`, and the generator of its data order.

    Two generators so that the seed changes both the initial weights and the data order; anything
    that must see the same network and batches as `train` (the sharpness probe) starts here.
    """
    init_gen, order_gen = seed_generators(config.train.seed)
    if config.train.backend == "triton" and device.type != "cuda" and torch.cuda.is_available():
        raise BadInput("`backend` triton runs on CUDA here: use `device` cuda (the interpreter is for machines "
                       "without a GPU)")
    model = build_model(config.model, config.train.backend).to(device, WEIGHT_DTYPES[config.train.dtype])
    init_weights(model, config.model, init_gen, batch=data.x_train[:config.optim.batch_size])
    return model, order_gen


def train(config: RunConfig, data: FashionMNIST | None = None, progress: bool = False,
          probe: Callable[[int, nn.Module, torch.Tensor, torch.optim.Optimizer], None] | None = None) -> TrainResult:
    """Train `config` once. `data` (already on the device) saves reloading in loops over seeds. The
    steps, the scoring, the divergence rule and the seeds' generators are those of a population
    (`study.population.train_population`). `probe(step, model, loss, optimizer)`, if given, sees
    every step that updates the weights just before it does (the loss of that step's batch, its
    graph alive): `study.experiments.dynamics` measures the first steps with it."""
    device, data = prepare_data(config, data)
    start = time.perf_counter()
    model, order_gen = initial_model(config, data, device)
    if config.model.model == "cnn" and config.train.backend == "torch":
        # With 1-64 channels, channels-last convolutions run ~20% faster on the CPU (measured). After
        # the initialisation: the generator fills memory in order, so the layout would change the weights.
        model = model.to(memory_format=torch.channels_last)

    total_steps = step_count(config, len(data.x_train))
    optimizer, scheduler = make_optimizer(model.parameters(), config.optim, total_steps)

    losses: list[float] = []
    epoch_val_acc: list[float] = []
    diverged_step = None
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress, leave=False)
    with StatsRecorder(activations(model)) as recorder:
        model.train()

        def end_of_epoch() -> None:
            recorder.recording = False  # scoring passes are not training steps
            epoch_val_acc.append(accuracy(model, data.x_val, data.y_val))

        def epoch_batches():
            return shuffled_batches(data.x_train, data.y_train, config.optim.batch_size, order_gen)

        for step, (xb, yb) in training_steps(config.optim.epochs, epoch_batches, total_steps, end_of_epoch):
            recorder.step, recorder.recording = step, step % config.train.stats_every == 0
            with autocast(config, device):
                loss = F.cross_entropy(model(xb), yb)
            losses.append(loss.item())
            if is_diverged(losses[-1], losses[0], config):
                diverged_step = step
                break
            if probe is not None:
                probe(step, model, loss, optimizer)
            optimiser_step(loss, optimizer, scheduler)
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        history = recorder.history()
    bar.close()

    whole_epochs = diverged_step is None and len(epoch_val_acc) == config.optim.epochs
    val_acc = epoch_val_acc[-1] if whole_epochs else accuracy(model, data.x_val, data.y_val)
    return TrainResult(
        config=config.to_dict(),
        val_acc=val_acc,
        test_acc=val_acc if data.val_is_test else accuracy(model, data.x_test, data.y_test),
        diverged=diverged_step is not None,
        diverged_step=diverged_step,
        steps=len(losses) - (diverged_step is not None),
        seconds=time.perf_counter() - start,
        losses=losses,
        layers=[layer.final() for layer in history],
        history=history,
        epoch_val_acc=epoch_val_acc,
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of correct argmax predictions (`correct_share`)."""
    model.eval()
    share = correct_share(model, x, y).item()
    model.train()
    return share


@torch.no_grad()
def correct_share(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of correct argmax predictions, scored EVAL_BATCH images at a time: a single model's
    (logits (B, 10) -> a 0-dim tensor) or a population's ((G, B, 10) -> (G,)). Non-finite logits
    count as 0, so a diverged model scores the chance level its predictions reach instead of raising."""
    correct = 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = logits_of(x[start:start + EVAL_BATCH]).nan_to_num(0.0, 0.0, 0.0)
        correct = correct + (logits.argmax(dim=-1) == y[start:start + EVAL_BATCH]).sum(dim=-1)
    return correct.double() / len(x)


def make_optimizer(params, optim: OptimConfig, total_steps: int):
    """SGD and its learning-rate schedule over `total_steps` steps, for any iterable of parameters.

    With `warmup_steps` K > 0 the rate of step i (from 0) is the schedule's times (i + 1) / K for
    the first K steps: it rises linearly from lr/K to lr, then follows the schedule."""
    optimizer = torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)
    if optim.warmup_steps:
        rates = _schedule_rates(replace(optim, warmup_steps=0), total_steps)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: rates[min(step, total_steps - 1)] * min(1.0, (step + 1) / optim.warmup_steps))
    if optim.schedule == "onecycle":
        # cycle_momentum off: the schedule moves the rate only; momentum stays what the config says.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=optim.lr, total_steps=total_steps,
                                                        cycle_momentum=False)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def _schedule_rates(optim: OptimConfig, total_steps: int) -> list[float]:
    """The schedule's rate at each step, as a multiple of lr (OneCycle's is not a product of factors,
    so the warm-up multiplies the rates it would set)."""
    probe, schedule = make_optimizer([torch.zeros(1, requires_grad=True)], optim, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(probe.param_groups[0]["lr"] / optim.lr)
        probe.step()  # no gradient: nothing moves, but the schedule may step after it
        schedule.step()
    return rates
