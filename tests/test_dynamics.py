"""A seed's first steps on real FashionMNIST (small MLP): lambda_max warm-started along the steps
against a cold start run to convergence, the ratio with each step's own rate, a probe that changes
nothing, and the outcome classes on made-up loss curves."""

import json

import optuna
import pytest

from conftest import run_cli
from study.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.design import DynamicsDesign
from study.errors import FieldError
from study.dynamics_tables import OUTCOMES
from study.experiments.dynamics import FirstSteps, classify, seed_dynamics
from study.experiments.sharpness import loss_hessian_of, top_eigenvalue
from study.training import train

MLP = ModelConfig(model="mlp", widths=(64,))


def config(lr=0.2, warmup=0, max_steps=12, seed=0) -> RunConfig:
    return RunConfig(model=MLP, optim=OptimConfig(lr=lr, momentum=0.85, warmup_steps=warmup),
                     train=TrainConfig(seed=seed, max_steps=max_steps))


class AlsoCold(FirstSteps):
    """The probe, and beside it at each measured step a cold-started iteration run to 1e-4."""

    def __init__(self, *args):
        super().__init__(*args)
        self.cold, self.rates = [], []

    def __call__(self, step, model, loss, optimizer):
        super().__call__(step, model, loss, optimizer)
        if step < self.steps:
            _, hvp, size = loss_hessian_of(model, loss)
            self.cold.append(top_eigenvalue(hvp, size, loss, tol=1e-4, max_iterations=3000).value)
            self.rates.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("warmup", [0, 3])
def test_lambda_max_warm_started_along_the_steps_agrees_with_a_cold_start_within_2_percent(fashion, warmup):
    run = config(warmup=warmup)
    probe = AlsoCold(0, 6, run.optim.momentum)
    train(run, fashion, probe=probe)
    assert [p.step for p in probe.points] == list(range(6))
    assert all(p.converged for p in probe.points)
    for point, cold, lr in zip(probe.points, probe.cold, probe.rates):
        assert point.lambda_max == pytest.approx(cold, rel=0.02)
        assert point.ratio == pytest.approx(lr * point.lambda_max / (2 * (1 + 0.85)), rel=1e-12)
    if warmup:
        assert probe.rates[:3] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    assert sum(p.products for p in probe.points[1:]) < 5 * probe.points[0].products  # the warm start pays


def test_the_probe_only_reads_the_seed_trains_as_it_does_alone(fashion):
    points, measured, outcome = seed_dynamics(config(max_steps=20, seed=3), 4, threshold=0.5, data=fashion)
    alone = train(config(max_steps=20, seed=3), fashion)
    assert measured.losses == alone.losses and measured.val_acc == alone.val_acc
    assert [p.loss for p in points] == pytest.approx(alone.losses[:4], rel=1e-6)
    assert outcome == classify(alone.losses, alone.diverged_step, alone.val_acc, 0.5)


@pytest.mark.parametrize("losses, diverged_step, val_acc, outcome", [
    ([2.3, 2.0, 1.2, 0.6], None, 0.80, "trained"),
    ([2.3, 4.0, 4.7, 1.0, 0.5], None, 0.79, "catapult"),  # rose above twice its start, came back
    ([2.3, 4.5, 2.0, 0.7], None, 0.80, "trained"),  # below twice its start: no catapult
    ([2.3, 30.0, 95.0], 2, 0.10, "diverged"),
    ([2.3, 2.3, 2.2, 2.2], None, 0.31, "stalled"),
    ([2.3, 9.0, 2.3, 2.2], None, 0.20, "stalled"),  # rose, came back, did not train
])
def test_outcome_classes_on_made_up_loss_curves(losses, diverged_step, val_acc, outcome):
    assert classify(losses, diverged_step, val_acc, threshold=0.5) == outcome


@pytest.mark.slow
def test_the_dynamics_command_prints_each_step_and_each_outcome_and_a_second_run_trains_nothing(tmp_path):
    flags = ["dynamics", "--model", "mlp", "--widths", "32", "--leak", "0", "--sub", "0", "--lr", "0.2",
             "--seeds", "0,1", "--steps", "3", "--max-steps", "12", "--json"]
    proc = run_cli(*flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    steps, seeds = [r for r in rows if "step" in r], [r for r in rows if "outcome" in r]
    assert [(r["seed"], r["step"]) for r in steps] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for r in steps:
        assert {"loss", "lambda_max", "ratio", "grad_norm", "converged"} <= set(r)
        assert r["ratio"] == pytest.approx(0.2 * r["lambda_max"] / (2 * (1 + 0.85)), rel=1e-12)
    assert [r["seed"] for r in seeds] == [0, 1] and all(r["outcome"] in OUTCOMES for r in seeds)
    storage = f"sqlite:///{tmp_path}/studies/dynamics.db"
    before = [(t.number, t.user_attrs) for t in optuna.load_study(study_name="dynamics", storage=storage).trials]
    again = run_cli(*flags, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert [(t.number, t.user_attrs) for t in optuna.load_study(study_name="dynamics", storage=storage).trials] == before


def test_dynamics_runs_a_grid_only():
    with pytest.raises(FieldError, match="the grid sampler only"):
        DynamicsDesign(sampler="tpe")
