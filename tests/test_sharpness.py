"""The sharpness probe: power iteration on Hessian-vector products against a dense float64 Hessian,
on the network and batch that training itself uses."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import study
from conftest import assert_one_line_error, run_cli
from study.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.experiments.sharpness import loss_hessian, sharpness, top_eigenvalue
from study.training import initial_model, prepare_data, train


def tiny(leak=0.1, sub=0.4, steps=None, seed=0) -> RunConfig:
    return RunConfig(model=ModelConfig(model="mlp", widths=(2,), leak=leak, sub=sub),
                     optim=OptimConfig(batch_size=64, lr=0.05),
                     train=TrainConfig(seed=seed, dtype="float64", max_steps=steps))


def dense_top_eigenvalue(model, x, y) -> float:
    """Independent of the probe: the whole Hessian by torch.func over a flat parameter vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = vector[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss_of, flat)
    return torch.linalg.eigvalsh(hessian).max().item()


@pytest.mark.slow
@pytest.mark.parametrize("leak, sub, seed", [(0.0, 0.0, 0), (0.1, 0.4, 1), (0.5, 0.7, 2)])
def test_lambda_max_agrees_with_a_dense_float64_hessian_within_one_percent(fashion, leak, sub, seed):
    config = tiny(leak, sub, seed=seed)
    device, data = prepare_data(config, fashion)
    model, _ = initial_model(config, data, device)
    x, y = data.x_train[:64], data.y_train[:64]
    _, hvp, size = loss_hessian(model, x, y)
    assert size == sum(p.numel() for p in model.parameters()) == 784 * 2 + 2 + 2 * 10 + 10
    eigen = top_eigenvalue(hvp, size, x)
    assert eigen.converged
    assert eigen.value == pytest.approx(dense_top_eigenvalue(model, x, y), rel=0.01)


def test_the_largest_eigenvalue_is_found_when_a_negative_one_dominates():
    eigenvalues = torch.tensor([-5.0, 3.0, 1.0, -0.5], dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    eigen = top_eigenvalue(lambda v: matrix @ v, 4, eigenvalues, tol=1e-6)
    assert eigen.converged and eigen.value == pytest.approx(3.0, rel=1e-6)
    assert eigen.residual <= 1e-6 * 3.0


def test_the_probe_starts_from_trainings_network_and_first_batch_and_follows_its_steps(fashion):
    """Step 0's loss is training's first loss (same network, same first batch); each later probe
    sees the network moved by one more step."""
    points = sharpness(tiny(steps=None), steps=3, data=fashion)
    assert [p.step for p in points] == [0, 1, 2, 3]
    assert points[0].loss == pytest.approx(train(tiny(steps=1), fashion).losses[0], rel=1e-12)
    assert all(p.converged and p.lambda_max > 0 for p in points)
    for p in points:
        assert p.stable_lr_bound == pytest.approx(2 * (1 + 0.85) / p.lambda_max)
    assert len({round(p.loss, 9) for p in points}) == 4  # the network moved between probes
    assert math.isfinite(points[-1].lambda_max)


@pytest.mark.slow
def test_the_command_prints_one_json_object_per_seed_and_step_and_refuses_bad_input(tmp_path):
    proc = run_cli("sharpness", "--model", "mlp", "--widths", "4", "--batch-size", "64", "--seeds", "0,1",
                   "--steps", "1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    points = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(p["seed"], p["step"]) for p in points] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(p["converged"] and p["lambda_max"] > 0 for p in points)
    assert points[0]["lambda_max"] != points[2]["lambda_max"]  # each seed its own network
    frame = study.sharpness(seeds=(0, 1), steps=1, model="mlp", widths=(4,), batch_size=64)
    assert frame.to_dict("records") == points  # the Python face measures what the command prints
    assert_one_line_error(run_cli("sharpness", "--steps", "-1", cwd=tmp_path), "--steps must be >= 0")
    assert_one_line_error(run_cli("sharpness", "--seeds", "0,0", cwd=tmp_path), "--seeds")
