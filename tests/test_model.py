import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.config import ModelConfig
from study.model import GeneralRelu, activations, build_model, init_weights, weighted_layers


@pytest.mark.parametrize("leak", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("sub", [0.0, 0.4])
@pytest.mark.parametrize("maxv", [None, 6.0])
def test_general_relu_matches_its_definition(leak, sub, maxv):
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    expected = torch.where(x > 0, x, leak * x) - sub
    if maxv is not None:
        expected = torch.minimum(expected, torch.tensor(maxv, dtype=torch.float64))
    assert torch.equal(GeneralRelu(leak, sub, maxv)(x), expected)


def test_general_relu_leak_zero_is_plain_relu():
    x = torch.randn(1000)
    assert torch.equal(GeneralRelu(0.0, 0.0)(x), F.relu(x))


@pytest.mark.parametrize("model, n_acts", [("mlp", 3), ("cnn", 4)])
def test_models_map_images_to_ten_logits(model, n_acts):
    net = build_model(ModelConfig(model=model))
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert len(activations(net)) == n_acts


def test_cnn_halves_the_image_at_every_convolution():
    net = build_model(ModelConfig(model="cnn"))
    x = torch.randn(2, 1, 28, 28)
    sizes = []
    for layer in net:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes == [(8, 14), (16, 7), (32, 4), (64, 2), (10, 1)]


def test_mlp_widths_are_configurable():
    net = build_model(ModelConfig(model="mlp", widths=(64, 32)))
    assert [(m.in_features, m.out_features) for m in weighted_layers(net)] == [(784, 64), (64, 32), (32, 10)]


@pytest.mark.parametrize("leak", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("init_scale", [0.5, 1.0, 3.0])
def test_kaiming_init_has_the_kaiming_std_times_scale(leak, init_scale):
    config = ModelConfig(model="mlp", widths=(1024, 1024), leak=leak, init_scale=init_scale)
    net = build_model(config)
    init_weights(net, config, torch.Generator().manual_seed(0))
    for layer in weighted_layers(net):
        expected = init_scale * math.sqrt(2 / (1 + leak ** 2)) / math.sqrt(layer.in_features)
        # 10k to 1M samples: the sample std is within 3% of the true one.
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_bias_init_default_is_pytorchs_and_zero_keeps_the_same_weights(model):
    """The lesson keeps PyTorch's bias init (uniform within 1/sqrt(fan_in)); `zero` differs in the
    biases only, so one seed compares paired across the two."""
    nets = {}
    for bias_init in ("default", "zero"):
        config = ModelConfig(model=model, widths=(512,), bias_init=bias_init)
        nets[bias_init] = build_model(config)
        init_weights(nets[bias_init], config, torch.Generator().manual_seed(3))
    for default, zero in zip(weighted_layers(nets["default"]), weighted_layers(nets["zero"])):
        assert torch.equal(default.weight, zero.weight)
        assert torch.count_nonzero(zero.bias) == 0
        bound = 1 / math.sqrt(default.weight[0].numel())
        assert default.bias.abs().max() <= bound
        if default.bias.numel() >= 64:  # uniform on [-b, b]: std b / sqrt(3)
            assert default.bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)



def test_init_is_determined_by_the_generator():
    config = ModelConfig(model="cnn")
    nets = [build_model(config) for _ in range(3)]
    for net, seed in zip(nets, (0, 0, 1)):
        init_weights(net, config, torch.Generator().manual_seed(seed))
    w = [weighted_layers(net)[0].weight for net in nets]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("leak, sub", [(0.0, 0.0), (0.1, 0.4), (0.5, 0.7)])
def test_lsuv_gives_unit_std_and_zero_mean_on_its_batch(fashion, model, leak, sub):
    config = ModelConfig(model=model, leak=leak, sub=sub, init="lsuv")
    net = build_model(config)
    batch = fashion.x_train[:512]
    init_weights(net, config, torch.Generator().manual_seed(0), batch=batch)
    captured = []
    hooks = [act.register_forward_hook(lambda m, i, out: captured.append(out)) for act in activations(net)]
    with torch.no_grad():
        net(batch)
    for hook in hooks:
        hook.remove()
    for out in captured:
        assert abs(out.std().item() - 1) < 1e-3
        if leak > 0 or sub > 0:  # a plain ReLU cannot be centred (see lsuv's docstring)
            assert abs(out.mean().item()) < 1e-3


def test_lsuv_scale_multiplies_the_lsuv_weights(fashion):
    batch = fashion.x_train[:256]
    weights = []
    for scale in (1.0, 2.0):
        config = ModelConfig(model="mlp", init="lsuv", init_scale=scale)
        net = build_model(config)
        init_weights(net, config, torch.Generator().manual_seed(0), batch=batch)
        weights.append(weighted_layers(net)[0].weight)
    assert torch.allclose(weights[1], 2 * weights[0])
