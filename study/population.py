"""Population training: G models (settings x seeds) trained together in one batched pass.

The members of a population share architecture, data and optimiser and differ only in init_scale,
leak, sub and seed. Each member starts from exactly the weights `train` would give it (the same
model builder, initialisation and generator), sees its own seed's data order, has its own
GeneralRelu, and its own loss: the summed loss gives every member its own gradient, and SGD,
momentum and weight decay act elementwise, so each member follows its single-model run up to
rounding (tests/test_population.py checks both).

Parameters are stacked with the member first, (G, ...). The MLP's layers run as batched GEMMs
(`torch.baddbmm`; on CUDA with `backend="triton"` the fused kernel's G dimension, which also
reduces the statistics), the CNN's convolutions as one grouped convolution with the members as
groups. A member whose loss turns NaN/inf or crosses its limit (`TrainConfig.divergence_limit`) is scored at once and removed
from the stacks, so it costs nothing afterwards and never slows the others.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from study import axes
from study.activations import GENERAL_RELU
from study.config import RunConfig
from study.data import FashionMNIST
from study.errors import BadInput
from study.model import CONV, architecture, build_model, fused_kernel, init_weights, weighted_layers
from study.stats import BatchedStats, LayerRecords, batched_stats, from_kernel
from study.training import (TrainResult, autocast, correct_share, is_diverged, make_optimizer, optimiser_step,
                            prepare_data, seed_generators, step_count, training_steps)


class Population:
    """G members' stacked parameters, their GeneralRelu settings, and the batched forward pass.

    layers: the architecture (`study.model.architecture`), the same as each member's `nn.Module`.
    params: per weighted layer, weight then bias, each (G, ...) with the layer's own shape after G
    (linear: (G, out, in) and (G, out); conv: (G, out, in, 3, 3) and (G, out)).
    leak, sub: (G,) on the device. `members[i]` is the index (into the configs) of stack row i.
    """

    def __init__(self, configs: list[RunConfig], data: FashionMNIST, device: torch.device):
        first = configs[0]
        self.kind, self.maxv, self.backend = first.model.model, first.model.maxv, first.train.backend
        self.layers = architecture(first.model)
        models = []
        for config in configs:
            model = build_model(config.model).to(device, data.x_train.dtype)
            init_weights(model, config.model, seed_generators(config.train.seed)[0],
                         batch=data.x_train[:config.optim.batch_size])
            models.append(model)
        layers = [weighted_layers(model) for model in models]
        self.params = [torch.stack([getattr(member[index], name).detach() for member in layers]).requires_grad_()
                       for index in range(len(layers[0])) for name in ("weight", "bias")]
        self.leak = torch.tensor([c.model.leak for c in configs], device=device, dtype=self.params[0].dtype)
        self.sub = torch.tensor([c.model.sub for c in configs], device=device, dtype=self.params[0].dtype)
        self.members = list(range(len(configs)))
        self.workspace: dict = {}  # batched_stats' scratch tensors, reused every step

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def n_hidden(self) -> int:
        return sum(layer.activated for layer in self.layers)

    def inputs(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The batch layout of `forward`. x: (N, 1, 28, 28) images; index: (G, B) rows of x per
        member, or None for the same x for every member. MLP: (G, B, 784), or (B, 784) shared by
        the members for the fused kernel (it reads one x for all, no copies); CNN: (B, G, 28, 28)."""
        if self.kind == "mlp":
            flat = x.flatten(1)
            if index is not None:
                return flat[index]
            return flat if self.backend == "triton" else flat.expand(self.size, *flat.shape).contiguous()
        images = x[:, 0]
        stacked = images[index.T] if index is not None else images.unsqueeze(1).expand(-1, self.size, -1, -1)
        # Channels-last: grouped convolutions with few channels per group run faster so on the CPU.
        return stacked.contiguous(memory_format=torch.channels_last)

    def forward(self, h: torch.Tensor, record: Callable[[int, BatchedStats], None] | None = None) -> torch.Tensor:
        """Logits (G, B, 10) of every member from `inputs`; `record(layer, stats)` receives each
        hidden layer's statistics when given."""
        for index, layer in enumerate(self.layers):
            weight, bias = self.params[2 * index], self.params[2 * index + 1]
            if layer.kind == "linear" and layer.activated and self.backend == "triton":
                h, fused_stats = fused_kernel().fused_linear_act(h, weight, bias, self.leak, self.sub, self.maxv,
                                                                 stats=record is not None,
                                                                 activation=GENERAL_RELU.kernel_name)
                if record:
                    record(index, from_kernel(fused_stats))
                continue
            if layer.kind == "linear":
                z = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))  # (G, B, out)
                leak, sub, split, model_dim = self.leak.view(-1, 1, 1), self.sub.view(-1, 1, 1), z.shape, 0
            else:  # the members as groups: member g's channels are the g-th block of `n_out`
                z = F.conv2d(h, weight.flatten(0, 1), bias.flatten(), stride=CONV["stride"], padding=CONV["padding"],
                             groups=self.size)  # (B, G * out, H, W)
                leak = self.leak.repeat_interleave(layer.n_out).view(1, -1, 1, 1)
                sub = self.sub.repeat_interleave(layer.n_out).view(1, -1, 1, 1)
                split, model_dim = (z.shape[0], self.size, layer.n_out, *z.shape[2:]), 1
            if not layer.activated:
                return z if layer.kind == "linear" else z.view(z.shape[0], self.size, -1).transpose(0, 1)
            h = GENERAL_RELU.batched(z, leak, sub, self.maxv)
            if record:
                record(index, batched_stats(z.view(split), h.view(split), model_dim, workspace=self.workspace))
        raise ValueError("the architecture ends in a layer without activation")

    def select(self, rows: list[int]) -> "Population":
        """A copy holding stack rows `rows` only, detached from training (to score members)."""
        index = torch.tensor(rows, dtype=torch.int64, device=self.leak.device)
        other = copy.copy(self)
        other.params = [p.detach().index_select(0, index) for p in self.params]
        other.leak, other.sub = self.leak[index], self.sub[index]
        other.members = [self.members[row] for row in rows]
        return other

    def keep(self, rows: list[int], optimizer: torch.optim.Optimizer) -> None:
        """Train only stack rows `rows` from now on; their momentum moves with them."""
        kept = self.select(rows)
        index = torch.tensor(rows, dtype=torch.int64, device=self.leak.device)
        for old, new in zip(self.params, kept.params):
            new.requires_grad_()
            buffer = optimizer.state.pop(old, {}).get("momentum_buffer")
            if buffer is not None:
                optimizer.state[new] = {"momentum_buffer": buffer.index_select(0, index)}
        optimizer.param_groups[0]["params"] = kept.params
        self.params, self.leak, self.sub, self.members = kept.params, kept.leak, kept.sub, kept.members

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Per member, the share of correct argmax predictions (`study.training.correct_share`)."""
        return correct_share(lambda images: self.forward(self.inputs(images)), x, y).tolist()


def check_population(configs: list[RunConfig]) -> None:
    """BadInput unless the configs differ only in the model's axes (`study.axes.MODEL`) and seed."""
    if not configs:
        raise BadInput("a population needs at least one configuration")

    def shared(config: RunConfig) -> RunConfig:
        defaults = {name: axes.BY_NAME[name].default for name in axes.MODEL}
        return replace(config, model=replace(config.model, **defaults), train=replace(config.train, seed=0))

    if any(shared(c) != shared(configs[0]) for c in configs[1:]):
        raise BadInput(f"population members may differ only in {', '.join(axes.MODEL)} and seed")
    if configs[0].train.backend == "triton" and configs[0].model.model == "cnn":
        raise BadInput("population training with `backend` triton runs the MLP only: use `backend` torch "
                       "for the CNN, or `population` off")


def train_population(configs: list[RunConfig], data: FashionMNIST | None = None, progress: bool = False,
                     on_result: Callable[[int, TrainResult], None] | None = None) -> list[TrainResult]:
    """Train every config of `configs` at once; result i is config i's, as `train(configs[i])` would
    give it up to rounding. `on_result(i, result)` is called as each member finishes: a diverged
    member when it diverges, the others at the end.

    Each result's `seconds` is the population's wall time divided by its size: the cost per model.
    """
    check_population(configs)
    first = configs[0]
    device, data = prepare_data(first, data)
    start = time.perf_counter()
    population = Population(configs, data, device)
    size = len(configs)
    total_steps = step_count(first, len(data.x_train))
    optimizer, scheduler = make_optimizer(population.params, first.optim, total_steps)

    order_gens = [seed_generators(c.train.seed)[1] for c in configs]
    losses: list[list[float]] = [[] for _ in configs]
    epoch_val_acc: list[list[float]] = [[] for _ in configs]
    records = [LayerRecords() for _ in range(population.n_hidden)]
    results: dict[int, TrainResult] = {}

    def finish(rows: list[int], diverged_step: int | None) -> None:
        """Score stack rows `rows` as they are now and hand their results out."""
        if not rows:
            return
        scored = population.select(rows)
        whole_epochs = diverged_step is None and len(epoch_val_acc[scored.members[0]]) == first.optim.epochs
        val = ([epoch_val_acc[m][-1] for m in scored.members] if whole_epochs
               else scored.accuracy(data.x_val, data.y_val))
        accuracies = zip(val, val if data.val_is_test else scored.accuracy(data.x_test, data.y_test))
        for member, (val_acc, test_acc) in zip(scored.members, accuracies):
            history = [layer.history(member) for layer in records]
            results[member] = TrainResult(
                config=configs[member].to_dict(), val_acc=val_acc, test_acc=test_acc,
                diverged=diverged_step is not None, diverged_step=diverged_step,
                steps=len(losses[member]) - (diverged_step is not None), seconds=0.0, losses=losses[member],
                layers=[layer.final() for layer in history], history=history, epoch_val_acc=epoch_val_acc[member])
            if on_result:
                on_result(member, results[member])

    def end_of_epoch() -> None:
        for member, acc in zip(population.members, population.accuracy(data.x_val, data.y_val)):
            epoch_val_acc[member].append(acc)

    def epoch_batches():
        return _epoch(order_gens, len(data.x_train), first.optim.batch_size, device)

    bar = tqdm(total=total_steps, desc=f"train {size} models", unit="step", disable=not progress, leave=False)
    for step, every_index in training_steps(first.optim.epochs, epoch_batches, total_steps, end_of_epoch):
        index = every_index[population.members]  # (G, B): the rows of the members still training
        x, y = population.inputs(data.x_train, index), data.y_train[index]

        def record(layer: int, stats: BatchedStats) -> None:
            records[layer].add(step, stats, population.members)

        with autocast(first, device):
            member_losses = _losses(population.forward(x, record if step % first.train.stats_every == 0
                                                       else None), y)
        values = member_losses.detach().tolist()
        for member, value in zip(population.members, values):
            losses[member].append(value)
        bad = [row for row, (member, value) in enumerate(zip(population.members, values))
               if is_diverged(value, losses[member][0], first)]
        if bad:  # scored with the weights that gave the bad loss, as `train` scores a diverged run
            finish(bad, step)
            rows = [row for row in range(population.size) if row not in bad]
            population.keep(rows, optimizer)
            if not rows:
                break
            index, y = index[rows], y[rows]
            with autocast(first, device):
                member_losses = _losses(population.forward(population.inputs(data.x_train, index)), y)
        optimiser_step(member_losses.sum(), optimizer, scheduler)
        bar.update()
        bar.set_postfix(models=population.size, loss=f"{min(values):.3f}", refresh=False)
    bar.close()

    finish(list(range(population.size)), None)
    seconds = (time.perf_counter() - start) / size
    for result in results.values():
        result.seconds = seconds
    return [results[member] for member in range(size)]


def _epoch(order_gens: list[torch.Generator], n: int, batch_size: int, device: torch.device):
    """One epoch of (every member, B) row indices: member g's permutation from its own generator, as
    `shuffled_batches` draws it for a single model, cut into the same contiguous batches."""
    orders = torch.stack([torch.randperm(n, generator=gen) for gen in order_gens]).to(device)
    for start in range(0, n, batch_size):
        yield orders[:, start:start + batch_size]


def _losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per member mean cross-entropy. logits: (G, B, 10); y: (G, B) -> (G,)."""
    members, batch = y.shape
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(members, batch).mean(dim=1)
