"""The activation's one declaration: each of its forms against an independent computation."""

import math

import numpy as np
import pytest
import torch

from study.activations import GENERAL_RELU


@pytest.mark.parametrize("leak, sub, maxv", [(0.0, 0.0, None), (0.1, 0.4, None), (0.2, 0.4, 1.5)])
def test_the_torch_form_is_the_lessons_general_relu(leak, sub, maxv):
    x = torch.randn(64, 9, dtype=torch.float64)
    expected = torch.nn.functional.leaky_relu(x, leak) - sub  # miniai's GeneralRelu
    assert torch.equal(GENERAL_RELU.forward(x, leak, sub, maxv), expected if maxv is None else expected.clamp_max(maxv))


def test_the_per_member_form_has_autograds_gradient_and_each_members_values():
    z = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    leak = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64).view(3, 1, 1)
    sub = torch.tensor([0.0, 0.4, -0.2], dtype=torch.float64).view(3, 1, 1)
    assert torch.autograd.gradcheck(lambda t: GENERAL_RELU.batched(t, leak, sub, None), (z,))
    expected = torch.stack([torch.nn.functional.leaky_relu(z[g], leak[g].item()) - sub[g] for g in range(3)])
    assert torch.equal(GENERAL_RELU.batched(z, leak, sub, 1.0), expected.clamp_max(1.0))


@pytest.mark.parametrize("leak", [0.0, 0.1, 0.5])
def test_the_gain_is_what_torch_nn_init_computes_for_a_leaky_relu(leak):
    assert GENERAL_RELU.gain(leak) == torch.nn.init.calculate_gain("leaky_relu", leak)


@pytest.mark.parametrize("leak, sub, q, c", [(0.0, 0.0, 1.0, 0.3), (0.1, 0.4, 0.5, -0.4), (0.5, 0.7, 2.0, 0.9)])
def test_the_closed_forms_agree_with_monte_carlo(leak, sub, q, c):
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, 2_000_000))
    q2 = 1.7 * q
    z1, z2 = math.sqrt(q) * u, math.sqrt(q2) * (c * u + math.sqrt(1 - c * c) * v)
    a1, a2 = (np.where(z > 0, z, leak * z) - sub for z in (z1, z2))
    mean, square = GENERAL_RELU.moments(np.array(q), leak, sub)
    assert mean == pytest.approx(a1.mean(), abs=4 * a1.std() / 1414)
    assert square == pytest.approx((a1 ** 2).mean(), abs=4 * (a1 ** 2).std() / 1414)
    pair = GENERAL_RELU.pair_moment(np.array(q), np.array(q2), np.array(c * math.sqrt(q * q2)), leak, sub)
    assert pair == pytest.approx((a1 * a2).mean(), abs=4 * (a1 * a2).std() / 1414)


def test_the_kernel_knows_the_activation_by_its_name():
    from kernels.fused_linear_act import ACTIVATIONS

    assert GENERAL_RELU.kernel_name in ACTIVATIONS
