"""Training on real FashionMNIST: the lesson's CNN trains, runs repeat exactly, divergence is a result."""

import dataclasses
import math

import pytest
import torch

from study import training
from study.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from study.data import load_fashion_mnist
from study.training import make_optimizer, train


def run(fashion, **model_and_more):
    optim = model_and_more.pop("optim", OptimConfig())
    train_config = model_and_more.pop("train", TrainConfig())
    return train(RunConfig(model=ModelConfig(**model_and_more), optim=optim, train=train_config), fashion)


@pytest.mark.slow
def test_lesson_cnn_trains_in_one_epoch(fashion):
    # lr 0.15: at the lesson's 0.2 this setting diverges for seed 0 (measured 2026-11-23, README).
    result = run(fashion, model="cnn", leak=0.1, sub=0.4, optim=OptimConfig(lr=0.15))
    assert not result.diverged
    assert result.test_acc >= 0.80
    assert result.steps == 49  # ceil(50,000 / 1024)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert len(result.layers) == 4
    assert [layer["units"] for layer in result.layers] == [8, 16, 32, 64]


@pytest.mark.slow
def test_same_seed_same_result_different_seed_different_run(fashion):
    first = run(fashion, model="cnn", train=TrainConfig(seed=3))
    again = run(fashion, model="cnn", train=TrainConfig(seed=3))
    other = run(fashion, model="cnn", train=TrainConfig(seed=4))
    assert (first.val_acc, first.test_acc, first.losses) == (again.val_acc, again.test_acc, again.losses)
    assert first.layers == again.layers
    assert first.losses[0] != other.losses[0]  # another init
    assert first.losses != other.losses


def test_exploding_config_comes_back_diverged(fashion):
    result = run(fashion, model="cnn", init_scale=10.0, optim=OptimConfig(lr=5.0))
    assert result.diverged
    assert result.diverged_step is not None and result.diverged_step < 49
    assert result.steps == result.diverged_step
    bad = result.losses[result.diverged_step]
    assert not math.isfinite(bad) or bad > 40 * result.losses[0]
    assert result.test_acc < 0.2  # chance level, scored without raising


def test_a_start_far_above_chance_is_not_itself_divergence(fashion):
    """At init_scale 3 the MLP starts near a loss of 130 (chance: ln 10 = 2.3) and trains at lr 0.003;
    the absolute rule of studies before 0.6.0 (a loss above 100) called it diverged at step 0."""
    optim = OptimConfig(lr=0.003)
    relative = run(fashion, model="mlp", init_scale=3.0, optim=optim)
    assert relative.losses[0] > 100 and not relative.diverged and relative.val_acc > 0.6
    absolute = run(fashion, model="mlp", init_scale=3.0, optim=optim,
                   train=TrainConfig(diverge_factor=None, diverge_loss=100))
    assert absolute.diverged_step == 0 and absolute.losses == relative.losses[:1]


def test_mlp_trains_and_records_every_step(fashion):
    result = run(fashion, model="mlp", leak=0.1, sub=0.4, optim=OptimConfig(lr=0.05))
    assert not result.diverged and result.val_acc > 0.80
    assert [layer.steps for layer in result.history] == [list(range(49))] * 3
    assert all(len(layer.hist) == 49 for layer in result.history)


@pytest.mark.slow
def test_stats_every_thins_the_record_without_changing_training(fashion):
    every = run(fashion, model="mlp", optim=OptimConfig(lr=0.05))
    sparse = run(fashion, model="mlp", optim=OptimConfig(lr=0.05), train=TrainConfig(stats_every=10))
    assert sparse.history[0].steps == [0, 10, 20, 30, 40]
    assert sparse.losses == every.losses


@pytest.mark.slow
@pytest.mark.parametrize("init, schedule", [("lsuv", "constant"), ("kaiming", "onecycle"), ("lsuv", "onecycle")])
def test_lsuv_and_onecycle_train(fashion, init, schedule):
    result = run(fashion, model="cnn", init=init, optim=OptimConfig(schedule=schedule))
    assert not result.diverged and result.val_acc > 0.75


def test_result_records_its_configuration(fashion):
    result = run(fashion, model="mlp", widths=(32,), optim=OptimConfig(lr=0.05, batch_size=4096))
    record = result.to_dict()
    assert record["config"]["optim"] == {"lr": 0.05, "momentum": 0.85, "warmup_steps": 0, "weight_decay": 0.0,
                                         "schedule": "constant", "batch_size": 4096, "epochs": 1}
    assert record["config"]["model"]["widths"] == (32,)
    assert "history" not in record and "history" in result.to_dict(with_history=True)
    assert result.steps == 13 and result.seconds > 0


@pytest.mark.parametrize("epochs", [2])
def test_more_epochs_take_more_steps_and_train_further(fashion, epochs):
    one = run(fashion, model="mlp", widths=(64,), optim=OptimConfig(lr=0.05))
    more = run(fashion, model="mlp", widths=(64,), optim=OptimConfig(lr=0.05, epochs=epochs))
    assert more.steps == epochs * one.steps
    assert more.val_acc > one.val_acc


@pytest.mark.slow
@pytest.mark.parametrize("model, widths, batch_size", [("mlp", (64, 32), 256), ("cnn", (256,), 64)])
def test_fused_kernel_trains_like_the_pytorch_layers(fashion, model, widths, batch_size):
    """The Triton path (interpreter here) and the PyTorch path from one seed: same losses, and the
    statistics recorded from the kernel's epilogue equal those computed from the activations."""
    # The interpreter runs a program at a time: score on 500 images, not 20,000.
    small = dataclasses.replace(fashion, x_val=fashion.x_val[:500], y_val=fashion.y_val[:500],
                                x_test=fashion.x_test[:500], y_test=fashion.y_test[:500])
    results = {}
    for backend in ("torch", "triton"):
        results[backend] = run(small, model=model, widths=widths, leak=0.1, sub=0.4,
                               optim=OptimConfig(batch_size=batch_size),
                               train=TrainConfig(backend=backend, max_steps=5))
    torch_run, triton_run = results["torch"], results["triton"]
    assert triton_run.steps == torch_run.steps == 5
    assert triton_run.losses == pytest.approx(torch_run.losses, abs=1e-4)
    for ours, theirs in zip(triton_run.history, torch_run.history):
        assert ours.steps == theirs.steps == [0, 1, 2, 3, 4]
        assert ours.mean == pytest.approx(theirs.mean, abs=1e-4)
        assert ours.std == pytest.approx(theirs.std, rel=1e-4)
        assert ours.dead_units == theirs.dead_units
        moved = sum(abs(a - b) for step_a, step_b in zip(ours.hist, theirs.hist) for a, b in zip(step_a, step_b))
        assert moved <= 4  # only values on a bin edge, after five steps of float32 drift, may move
    assert triton_run.val_acc == pytest.approx(torch_run.val_acc, abs=0.01)
    assert triton_run.val_acc > 0.2  # five steps: above chance


def test_max_steps_stops_early(fashion):
    result = run(fashion, model="mlp", widths=(16,), optim=OptimConfig(lr=0.05), train=TrainConfig(max_steps=7))
    assert result.steps == 7 and len(result.losses) == 7


def rates(optim: OptimConfig, steps: int) -> list[float]:
    params = [torch.zeros(1, requires_grad=True)]
    optimizer, schedule = make_optimizer(params, optim, steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
@pytest.mark.parametrize("warmup", [1, 4, 12])
def test_warmup_rises_linearly_from_lr_over_k_to_the_schedule(schedule, warmup):
    plain = rates(OptimConfig(lr=0.4, schedule=schedule), 10)
    warmed = rates(OptimConfig(lr=0.4, schedule=schedule, warmup_steps=warmup), 10)
    expected = [rate * min(1.0, (step + 1) / warmup) for step, rate in enumerate(plain)]
    assert warmed == pytest.approx(expected, rel=1e-12)
    if schedule == "constant":
        assert warmed[0] == pytest.approx(0.4 / warmup)


def test_warmup_changes_the_run_and_zero_is_the_plain_run(fashion):
    small = dict(model="mlp", widths=(32,), optim=OptimConfig(lr=0.5, batch_size=4096))
    plain = run(fashion, **small)
    zero = run(fashion, **{**small, "optim": OptimConfig(lr=0.5, batch_size=4096, warmup_steps=0)})
    warmed = run(fashion, **{**small, "optim": OptimConfig(lr=0.5, batch_size=4096, warmup_steps=5)})
    assert zero.losses == plain.losses
    assert warmed.losses[0] == plain.losses[0]  # the same initial weights and first batch
    assert warmed.losses[1] != plain.losses[1]


@pytest.mark.parametrize("n_val", [0, 10_000])
def test_the_lesson_split_scores_the_test_file_once_for_validation_and_test(monkeypatch, n_val):
    """With n_val 0 the test file validates: one scoring pass gives both accuracies, the same number
    scoring the test file apart gives; with a held-out split both are scored."""
    data = load_fashion_mnist(DataConfig(n_val=n_val))
    passes = []
    original = training.accuracy
    monkeypatch.setattr(training, "accuracy", lambda model, x, y: passes.append(len(x)) or original(model, x, y))
    config = RunConfig(data=DataConfig(n_val=n_val), model=ModelConfig(model="mlp", widths=(16,)),
                       optim=OptimConfig(lr=0.05), train=TrainConfig(max_steps=5))
    result = train(config, data)
    assert data.val_is_test == (n_val == 0) and len(passes) == (1 if n_val == 0 else 2)
    if n_val == 0:
        assert result.test_acc == result.val_acc
        model, _ = training.initial_model(config, data, torch.device("cpu"))
        assert original(model, data.x_test, data.y_test) == original(model, data.x_val, data.y_val)
