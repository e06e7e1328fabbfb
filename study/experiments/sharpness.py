"""Sharpness: the largest eigenvalue of the training loss's Hessian, at initialisation and along the
first steps of training.

Gradient descent with heavy-ball momentum mu on a quadratic of curvature lambda is stable if and
only if lr * lambda < 2 (1 + mu). So `stable_lr_bound` = 2 (1 + mu) / lambda_max is the largest
learning rate the curvature at a point allows; the findings set it beside the measured edge
(`python -m study edge`). The loss is that of one batch: the seed's first training batch, the
batch its first step takes, held fixed along the steps so the values compare.

The eigenvalue comes from power iteration on Hessian-vector products (double backward), stopped
when the residual ||Hv - lambda v|| is at most `tol` |lambda|: then an eigenvalue of H lies within
`tol` (relative) of the returned value. Where the most negative eigenvalue is larger in magnitude
than the largest, a second iteration on H - lambda_neg I finds the largest.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from study import interrupts
from study.config import OptimConfig, RunConfig
from study.data import FashionMNIST, shuffled_batches
from study.training import autocast, initial_model, is_diverged, make_optimizer, prepare_data, step_count

TOLERANCE = 0.01  # relative: the "converged to 1%"
MAX_ITERATIONS = 500
START_SEED = 0  # the power iteration's random start vector: fixed, so a run repeats exactly


@dataclass(frozen=True)
class Eigen:
    value: float  # the Rayleigh quotient of the last iterate
    residual: float  # ||Hv - value v|| for the unit iterate v: an eigenvalue lies within it of `value`
    iterations: int  # Hessian-vector products taken
    converged: bool  # residual <= tol |value| within the allowed iterations
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)  # the last unit iterate


@dataclass(frozen=True)
class SharpnessPoint:
    seed: int
    step: int  # 0 = at initialisation; k = after k optimiser steps
    loss: float  # of the probe batch
    lambda_max: float
    stable_lr_bound: float  # 2 (1 + momentum) / lambda_max; inf where lambda_max <= 0
    iterations: int
    converged: bool

    def to_dict(self) -> dict:
        return asdict(self)


def top_eigenvalue(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, like: torch.Tensor,
                   tol: float = TOLERANCE, max_iterations: int = MAX_ITERATIONS,
                   start: torch.Tensor | None = None) -> Eigen:
    """The largest eigenvalue of the symmetric operator `matvec` on vectors of `size` (dtype and
    device of `like`), iterated from `start` (a nearby operator's `Eigen.vector`: a warm start) or
    from a fixed random vector."""
    dominant = _power(matvec, size, like, 0.0, tol, max_iterations, start)
    if dominant.value >= 0:
        return dominant
    largest = _power(matvec, size, like, dominant.value, tol, max_iterations)
    return Eigen(largest.value, largest.residual, dominant.iterations + largest.iterations, largest.converged,
                 largest.vector)


def _power(matvec, size: int, like: torch.Tensor, shift: float, tol: float, max_iterations: int,
           start: torch.Tensor | None = None) -> Eigen:
    """Power iteration on matvec - shift I; the value returned is of matvec itself."""
    if start is None:
        start = torch.randn(size, generator=torch.Generator().manual_seed(START_SEED), dtype=torch.float64)
    v = start.to(like)
    v = v / v.norm()
    value = residual = float("nan")
    for iteration in range(1, max_iterations + 1):
        interrupts.check()  # up to a thousand Hessian-vector products per eigenvalue
        hv = matvec(v) - shift * v
        rayleigh = torch.dot(v, hv).item()
        value, residual = rayleigh + shift, (hv - rayleigh * v).norm().item()
        if residual <= tol * abs(value):
            return Eigen(value, residual, iteration, True, v)
        norm = hv.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = hv / norm
    return Eigen(value, residual, iteration, False, v)


def loss_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Callable, int]:
    """(loss, v -> H v, number of parameters) of the cross-entropy of `model` on (x, y); v and Hv
    are flat vectors over all parameters in `model.parameters()` order."""
    loss = F.cross_entropy(model(x), y)
    _, hvp, size = loss_hessian_of(model, loss)
    return loss.item(), hvp, size


def loss_hessian_of(model: nn.Module, loss: torch.Tensor) -> tuple[float, Callable, int]:
    """(gradient norm, v -> H v, number of parameters) of `loss`, a scalar of `model`'s parameters
    whose graph is alive (and stays so: the caller may still step on it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])

    def hvp(v: torch.Tensor) -> torch.Tensor:
        parts = torch.autograd.grad(flat_grad, params, grad_outputs=v, retain_graph=True)
        return torch.cat([p.reshape(-1) for p in parts])

    return flat_grad.norm().item(), hvp, flat_grad.numel()


def sharpness_text(points: pd.DataFrame, optim: OptimConfig) -> str:
    """`study.sharpness`'s table for people: a line per seed and step."""
    lines = [f"largest Hessian eigenvalue of the loss on each seed's first batch (power iteration, {TOLERANCE:.0%}); "
             f"bound = 2 (1 + momentum) / lambda_max, momentum {optim.momentum:g}, lr {optim.lr:g}",
             f"{'seed':>5} {'step':>5} {'loss':>8} {'lambda_max':>11} {'lr bound':>9} {'products':>9}"]
    for p in points.itertuples():
        lines.append(f"{p.seed:>5} {p.step:>5} {p.loss:>8.4f} {p.lambda_max:>11.4g} {p.stable_lr_bound:>9.4g} "
                     f"{p.iterations:>9}" + ("" if p.converged else "  (not converged)"))
    return "\n".join(lines)


def sharpness(config: RunConfig, steps: int = 0, data: FashionMNIST | None = None,
              tol: float = TOLERANCE, progress: bool = False) -> list[SharpnessPoint]:
    """lambda_max at initialisation and after each of the first `steps` optimiser steps of
    `config`'s training (the same network, batches and optimiser as `train`), on the first batch.
    Stops early where the training loss diverges, as training does."""
    device, data = prepare_data(config, data)
    model, order_gen = initial_model(config, data, device)
    # One shuffle per epoch from the seed's order generator, as `train` draws them.
    batches = itertools.chain.from_iterable(
        shuffled_batches(data.x_train, data.y_train, config.optim.batch_size, order_gen) for _ in itertools.count())
    first = next(batches)
    probe_x, probe_y = first
    steps = min(steps, step_count(config, len(data.x_train)))
    optimizer, scheduler = make_optimizer(model.parameters(), config.optim, step_count(config, len(data.x_train)))
    points = []
    bar = tqdm(total=steps + 1, desc=f"sharpness seed {config.train.seed}", disable=not progress, leave=False)
    batch, train_losses = first, []
    for step in range(steps + 1):
        loss, hvp, size = loss_hessian(model, probe_x, probe_y)
        eigen = top_eigenvalue(hvp, size, probe_x, tol)
        bound = 2 * (1 + config.optim.momentum) / eigen.value if eigen.value > 0 else float("inf")
        points.append(SharpnessPoint(config.train.seed, step, loss, eigen.value, bound, eigen.iterations,
                                     eigen.converged))
        bar.update()
        if step == steps:
            break
        with autocast(config, device):
            train_loss = F.cross_entropy(model(batch[0]), batch[1])
        train_losses.append(train_loss.item())
        if is_diverged(train_losses[-1], train_losses[0], config):
            break
        optimizer.zero_grad(set_to_none=True)
        train_loss.backward()
        optimizer.step()
        scheduler.step()
        batch = next(batches)
    bar.close()
    return points
