"""GeneralRelu, the MLP and the lesson's CNN, and their initialisations (Kaiming x scale, LSUV).

Definitions follow fast.ai's course22p2 (miniai/activations.py, init.py, lesson 11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ModelConfig

IMAGE_PIXELS = 28 * 28
N_CLASSES = 10
CNN_CHANNELS = (1, 8, 16, 32, 64)  # 28 -> 14 -> 7 -> 4 -> 2 with 3x3 stride-2 convolutions


class GeneralRelu(nn.Module):
    """`clamp_max(leaky_relu(x, leak) - sub, maxv)`; leak 0 is a plain ReLU, maxv None no clamp."""

    def __init__(self, leak: float = 0.0, sub: float = 0.0, maxv: float | None = None):
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x, self.leak) if self.leak else F.relu(x)
        x = x - self.sub
        return x if self.maxv is None else x.clamp_max(self.maxv)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


def build_model(config: ModelConfig) -> nn.Sequential:
    """The untrained network; call `init_weights` before training. Input (B, 1, 28, 28), output (B, 10)."""
    def act() -> GeneralRelu:
        return GeneralRelu(config.leak, config.sub, config.maxv)

    if config.model == "mlp":
        widths = (IMAGE_PIXELS, *config.widths)
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths, widths[1:]):
            layers += [nn.Linear(n_in, n_out), act()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], N_CLASSES))

    layers = []
    for n_in, n_out in zip(CNN_CHANNELS, CNN_CHANNELS[1:]):
        layers += [_conv(n_in, n_out), act()]
    # The lesson's head: one more stride-2 convolution (2x2 -> 1x1) to 10 channels, then flatten.
    return nn.Sequential(*layers, _conv(CNN_CHANNELS[-1], N_CLASSES), nn.Flatten())


def activations(model: nn.Module) -> list[GeneralRelu]:
    """The model's GeneralRelu modules, input side first: the layers whose statistics are recorded."""
    return [m for m in model.modules() if isinstance(m, GeneralRelu)]


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def init_weights(model: nn.Module, config: ModelConfig, generator: torch.Generator,
                 batch: torch.Tensor | None = None) -> None:
    """Kaiming normal with a=leak (gain sqrt(2 / (1 + leak^2)), fan-in) on every layer, biases zero.

    With `config.init == "lsuv"` the Kaiming weights are then rescaled layer by layer on `batch`
    (required). Finally every weight is multiplied by `config.init_scale`.
    """
    with torch.no_grad():
        for layer in weighted_layers(model):
            nn.init.kaiming_normal_(layer.weight, a=config.leak, generator=generator)
            nn.init.zeros_(layer.bias)
        if config.init == "lsuv":
            if batch is None:
                raise ValueError("LSUV initialisation needs a batch of inputs")
            lsuv(model, batch)
        for layer in weighted_layers(model):
            layer.weight.mul_(config.init_scale)


def lsuv(model: nn.Module, batch: torch.Tensor, tol: float = 1e-3, max_iters: int = 50) -> list[tuple[float, float]]:
    """Layer-sequential unit variance (Mishkin & Matas 2016), as in the fast.ai lesson.

    For each layer followed by a GeneralRelu, input side first: divide its weight by the
    activation's std and, where the activation can be negative (leak > 0 or sub > 0), subtract the
    activation's mean from its bias, until on `batch` the std is within `tol` of 1 (and the mean
    within `tol` of 0). A plain ReLU's output is never negative, so centring it would only push
    every unit off: there only the variance is fixed, as in the paper. Returns each layer's final
    (mean, std).
    """
    final = []
    with torch.no_grad():
        for layer, act in zip(weighted_layers(model), activations(model)):
            centre = act.leak > 0 or act.sub > 0
            captured: dict[str, torch.Tensor] = {}
            hook = act.register_forward_hook(lambda m, i, out: captured.__setitem__("out", out))
            try:
                for _ in range(max_iters):
                    model(batch)
                    mean, std = captured["out"].mean().item(), captured["out"].std().item()
                    if abs(std - 1) < tol and (not centre or abs(mean) < tol):
                        break
                    if not std > 0:  # every unit off (or NaN): no scale can fix it
                        break
                    if centre:
                        layer.bias.sub_(mean)
                    layer.weight.div_(std)
            finally:
                hook.remove()
            final.append((mean, std))
    return final


def _conv(n_in: int, n_out: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1)
