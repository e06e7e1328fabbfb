"""Signal propagation: the mean-field formulas against Monte Carlo and against wide float64 networks
on real FashionMNIST images."""

import numpy as np
import pandas as pd
import pytest
import torch

import study
from conftest import assert_one_line_error, run_cli
from study.activations import GENERAL_RELU
from study.experiments.signal import SignalNet, agreement, fixed_point_variance, measure, predict

LESSON = [(0.0, 0.0), (0.1, 0.4), (0.5, 0.7), (0.05, 0.9)]


@pytest.mark.parametrize("leak, sub", [(0.1, 0.4), (0.2, 0.4), (0.5, 0.7)])
def test_with_sub_the_variance_has_a_fixed_point_where_the_mean_is_minus_half_sub(leak, sub):
    q = fixed_point_variance(leak, sub)
    mean, square = GENERAL_RELU.moments(np.array(q), leak, sub)
    assert mean == pytest.approx(-sub / 2)
    assert 2 / (1 + leak ** 2) * square == pytest.approx(q)  # q -> q'


@pytest.mark.parametrize("leak, sub", LESSON)
@pytest.mark.parametrize("bias_init", ["default", "zero"])
def test_a_wide_float64_network_follows_the_mean_field_prediction(fashion, leak, sub, bias_init):
    net = SignalNet(depth=8, width=2048, bias_init=bias_init)
    x, y = fashion.x_train[:128], fashion.y_train[:128]
    profiles = [measure(x, y, leak, sub, seed, net) for seed in (0, 1)]
    prediction = predict(x, leak, sub, net)
    errors = agreement(profiles, prediction)
    # With sub = 0 the variance map is neutral (q' = q): each seed's finite-width error walks freely
    # (about 18% after 8 layers of 2048 here); with sub > 0 the fixed point pulls it back.
    assert errors["var_rel_error"] < (0.25 if sub == 0 else 0.12)
    assert errors["mean_abs_error"] < 0.06
    assert errors["correlation_abs_error"] < 0.05
    # chi = init_scale^2 = 1 (by construction): the gradient neither grows nor shrinks much over 8 layers.
    for p in profiles:
        assert 0.75 < p.grad_norm[0] / p.grad_norm[-1] < 1.33


def test_the_network_is_float64_from_the_input_on(fashion):
    """A float32 forward would leave rounding noise near 1e-7 in the correlation of an image with itself."""
    x = torch.cat([fashion.x_train[:1]] * 4)
    profile = measure(x, fashion.y_train[:4], 0.1, 0.4, 0, SignalNet(depth=4, width=64))
    assert all(abs(c - 1) < 1e-14 for c in profile.correlation)


@pytest.mark.slow
def test_the_command_writes_its_table_and_picture_and_refuses_bad_input(tmp_path):
    proc = run_cli("depth", "--depth", "3", "--width", "32", "--batch", "16", "--seeds", "0",
                   "--setting", "0.1,0.4", "--setting", "0,0", "--out", str(tmp_path / "signal"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "leak 0.1, sub 0.4" in proc.stdout
    rows = (tmp_path / "signal" / "signal.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 + 2 * 3  # header, 2 settings x 3 layers measured and predicted
    assert (tmp_path / "signal" / "signal.png").stat().st_size > 0
    frame = study.signal([(0.1, 0.4), (0.0, 0.0)], depth=3, width=32, batch=16, seeds=(0,))
    stored = pd.read_csv(tmp_path / "signal" / "signal.csv", dtype={"seed": str})
    pd.testing.assert_frame_equal(frame.astype({"seed": str}), stored, check_exact=False, rtol=1e-12)
    assert_one_line_error(run_cli("depth", "--setting", "1.5,0", cwd=tmp_path), "leak")
    assert_one_line_error(run_cli("depth", "--setting", "0.1", cwd=tmp_path), "--setting")
    assert_one_line_error(run_cli("depth", "--depth", "0", cwd=tmp_path), "--depth")
