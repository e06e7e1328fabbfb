"""Why a seed fails: its first steps measured while it trains as `train` trains it, and its outcome.

For each of the first K optimiser steps, on that step's own batch before the step is taken: the
loss, lambda_max of the loss's Hessian (power iteration on Hessian-vector products, started from the
previous step's eigenvector, so that a handful of products usually suffice; `converged` says whether
its residual came within the tolerance), the ratio lr x lambda_max / (2 (1 + momentum)) with the
step's own learning rate (warm-up included: above 1 the step is beyond heavy-ball SGD's stability
bound on a quadratic of that curvature), and the gradient's norm. The seed then trains on to the end
and is classed (`classify`):
  - `diverged`: stopped by the divergence rule, at its step;
  - `stalled`: ended at or below the accuracy threshold without diverging;
  - `catapult`: trained, after its loss rose above `catapult_factor` (default 2) times its first loss;
  - `trained`: trained without such a rise.
The probe only reads: the seed's weights, batches and result are those `train` gives alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import optuna
import torch
from torch import nn

from study.axes import describe_setting
from study.config import RunConfig
from study.data import FashionMNIST
from study.design import CATAPULT_FACTOR, DynamicsDesign
from study.experiments.sharpness import TOLERANCE, loss_hessian_of, top_eigenvalue
from study.records import is_trained
from study.runner import Search
from study.training import TrainResult, train

WARM_ITERATIONS = 100  # per step: a warm start needs few; a step that needs more is flagged unconverged


@dataclass(frozen=True)
class StepPoint:
    """One of the first steps of one seed, measured before the step is taken."""

    seed: int
    step: int
    loss: float  # of this step's batch
    lambda_max: float
    ratio: float  # lr x lambda_max / (2 (1 + momentum)), lr this step's own
    grad_norm: float
    converged: bool
    products: int  # Hessian-vector products taken

    def to_dict(self) -> dict:
        return asdict(self)


class FirstSteps:
    """The probe `train` calls at every step (`training.train`'s `probe`): measures the first
    `steps` of them."""

    def __init__(self, seed: int, steps: int, momentum: float, tol: float = TOLERANCE):
        self.seed, self.steps, self.momentum, self.tol = seed, steps, momentum, tol
        self.points: list[StepPoint] = []
        self.vector: torch.Tensor | None = None

    def __call__(self, step: int, model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if step >= self.steps:
            return
        grad_norm, hvp, size = loss_hessian_of(model, loss)
        eigen = top_eigenvalue(hvp, size, loss, self.tol, WARM_ITERATIONS, start=self.vector)
        self.vector = eigen.vector
        lr = optimizer.param_groups[0]["lr"]
        self.points.append(StepPoint(self.seed, step, loss.item(), eigen.value,
                                     lr * eigen.value / (2 * (1 + self.momentum)), grad_norm, eigen.converged,
                                     eigen.iterations))


def classify(losses: list[float], diverged_step: int | None, val_acc: float, threshold: float,
             catapult_factor: float = CATAPULT_FACTOR) -> str:
    """One of `study.dynamics_tables.OUTCOMES` for a finished seed: `losses` its training losses, step by step."""
    if diverged_step is not None:
        return "diverged"
    if not is_trained(val_acc, threshold):
        return "stalled"
    return "catapult" if max(losses) > catapult_factor * losses[0] else "trained"


def seed_dynamics(config: RunConfig, steps: int, threshold: float, data: FashionMNIST | None = None,
                  catapult_factor: float = CATAPULT_FACTOR, progress: bool = False,
                  ) -> tuple[list[StepPoint], TrainResult, str]:
    """The first `steps` of `config`'s seed measured, its result trained to the end, and its outcome."""
    first = FirstSteps(config.train.seed, steps, config.optim.momentum)
    result = train(config, data, progress, probe=first)
    return first.points, result, classify(result.losses, result.diverged_step, result.val_acc, threshold,
                                          catapult_factor)


class DynamicsSearch(Search):
    """The driver of a `DynamicsDesign` study: every seed trained alone (its first steps measured by
    the probe), stored with its `first_steps` and `outcome` beside the ordinary record."""

    design: DynamicsDesign

    def _train_round(self, models: list[tuple[optuna.Trial, dict, int]], records: dict[int, dict[int, dict]],
                     size: int) -> None:
        for trial, params, seed in models:  # one at a time, whatever `size`: the probe follows one model
            self.bar.set_description(f"{describe_setting(params)} seed {seed}")
            points, result, outcome = seed_dynamics(self._run_config(params, seed), self.design.steps,
                                                    self.design.train_threshold, self.data,
                                                    self.design.catapult_factor)
            measured = {"first_steps": [point.to_dict() for point in points], "outcome": outcome}
            records[trial.number][seed] = self._store_seed(trial, params, seed, result, measured)
