"""GeneralRelu, the MLP and the lesson's CNN, and their initialisations (Kaiming x scale, LSUV).

Definitions follow fast.ai's course22p2 (miniai/activations.py, init.py, lesson 11).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from study.activations import GENERAL_RELU
from study.config import ModelConfig
from study.data import N_CLASSES

IMAGE_PIXELS = 28 * 28
CNN_CHANNELS = (1, 8, 16, 32, 64)  # 28 -> 14 -> 7 -> 4 -> 2 with 3x3 stride-2 convolutions
CONV = dict(kernel_size=3, stride=2, padding=1)  # every convolution of the lesson's CNN


@dataclass(frozen=True)
class Layer:
    """One weighted layer of the architecture: `linear` (n_in -> n_out features) or `conv` (CONV:
    n_in -> n_out channels, each side halved, rounding up); `activated`: the activation follows it
    (every hidden layer)."""

    kind: str
    n_in: int
    n_out: int
    activated: bool


def architecture(config: ModelConfig) -> list[Layer]:
    """The weighted layers, input side first: the one description `build_model` and the
    population's stacked weights (`study.population`) are both built from. The MLP flattens the
    image first; the lesson's CNN ends in a convolution to 10 channels at 1x1, then flattens."""
    kind, sizes = (("linear", (IMAGE_PIXELS, *config.widths, N_CLASSES)) if config.model == "mlp"
                   else ("conv", (*CNN_CHANNELS, N_CLASSES)))
    return [Layer(kind, n_in, n_out, activated=index < len(sizes) - 2)
            for index, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]))]


class GeneralRelu(nn.Module):
    """`clamp_max(leaky_relu(x, leak) - sub, maxv)` as a module (`study.activations.GENERAL_RELU`)."""

    def __init__(self, leak: float = 0.0, sub: float = 0.0, maxv: float | None = None):
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GENERAL_RELU.forward(x, self.leak, self.sub, self.maxv)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


class FusedLinearAct(nn.Linear):
    """`GeneralRelu(linear(x))` in one Triton kernel that also reduces the activation statistics.

    A `nn.Linear` (same parameters, same initialisation) whose forward returns the activation and
    keeps the kernel's statistics of it in `last_stats` (see kernels/fused_linear_act.py), or None
    when `record_stats` is False (a `StatsRecorder` sets it per pass: the kernel then skips them).
    x: (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int, out_features: int, leak: float, sub: float, maxv: float | None):
        super().__init__(in_features, out_features)
        self.leak, self.sub, self.maxv = leak, sub, maxv
        self.record_stats = True
        self.last_stats = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, self.last_stats = fused_kernel().fused_linear_act(x, self.weight, self.bias, self.leak, self.sub, self.maxv,
                                                             stats=self.record_stats,
                                                             activation=GENERAL_RELU.kernel_name)
        return y


class FusedConvAct(nn.Conv2d):
    """`GeneralRelu(conv3x3_stride2(x))` as the fused kernel's GEMM over unfolded patches (im2col):
    rows = batch x output positions, K = in_channels x 9, units = output channels.
    x: (B, C, H, W) -> (B, out_channels, ceil(H/2), ceil(W/2)). Statistics as `FusedLinearAct`'s."""

    def __init__(self, in_channels: int, out_channels: int, leak: float, sub: float, maxv: float | None):
        super().__init__(in_channels, out_channels, **CONV)
        self.leak, self.sub, self.maxv = leak, sub, maxv
        self.record_stats = True
        self.last_stats = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h, out_w = (height + 1) // 2, (width + 1) // 2
        patches = F.unfold(x, **CONV)  # (B, C*9, L)
        rows = patches.transpose(1, 2).reshape(batch * out_h * out_w, -1)  # (B*L, C*9)
        y, self.last_stats = fused_kernel().fused_linear_act(
            rows, self.weight.flatten(1), self.bias, self.leak, self.sub, self.maxv,
            stats=self.record_stats, activation=GENERAL_RELU.kernel_name)  # (B*L, out)
        return y.reshape(batch, out_h * out_w, -1).transpose(1, 2).reshape(batch, -1, out_h, out_w)


def fused_kernel():
    """kernels.fused_linear_act. Without CUDA it runs under Triton's interpreter, which the entry
    points choose (`study.api.prepare_backend`) before triton is first imported."""
    if os.environ.get("TRITON_INTERPRET") == "1" and _triton_compiled_already():
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set: call "
                           "study.api.prepare_backend('triton') first (the command line and study.train do)")
    from kernels import fused_linear_act
    return fused_linear_act


def _triton_compiled_already() -> bool:
    """Whether triton.language was imported in compiled (not interpreted) mode."""
    language = sys.modules.get("triton.language.standard")
    return language is not None and type(language.cdiv).__name__ != "InterpretedFunction"


def build_model(config: ModelConfig, backend: str = "torch") -> nn.Sequential:
    """The untrained network; call `init_weights` before training. Input (B, 1, 28, 28), output (B, 10).

    backend "torch": layers followed by GeneralRelu modules; "triton": each hidden layer and its
    activation fused (`FusedLinearAct`, `FusedConvAct`), with the same parameters and initialisation.
    """
    act = (config.leak, config.sub, config.maxv)
    layers: list[nn.Module] = [nn.Flatten()] if config.model == "mlp" else []
    for layer in architecture(config):
        linear = layer.kind == "linear"
        if layer.activated and backend == "triton":
            layers.append((FusedLinearAct if linear else FusedConvAct)(layer.n_in, layer.n_out, *act))
            continue
        layers.append(nn.Linear(layer.n_in, layer.n_out) if linear else nn.Conv2d(layer.n_in, layer.n_out, **CONV))
        if layer.activated:
            layers.append(GeneralRelu(*act))
    return nn.Sequential(*layers) if config.model == "mlp" else nn.Sequential(*layers, nn.Flatten())


def activations(model: nn.Module) -> list[nn.Module]:
    """The modules whose output is a hidden activation (GeneralRelu, or a fused layer), input side
    first: the layers whose statistics are recorded."""
    return [m for m in model.modules() if isinstance(m, (GeneralRelu, FusedLinearAct, FusedConvAct))]


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def init_weights(model: nn.Module, config: ModelConfig, generator: torch.Generator,
                 batch: torch.Tensor | None = None) -> None:
    """Kaiming normal (the activation's gain, `GENERAL_RELU.gain(leak)`, over sqrt(fan-in), drawn as
    torch.nn.init.kaiming_normal_ draws it) on every layer; biases as
    `config.bias_init` says: PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the lesson's) or zero.

    Every weight is drawn before any bias, so one seed gives the same weights under both bias inits
    and they compare paired. With `config.init == "lsuv"` the Kaiming weights are then rescaled layer by layer on `batch`
    (required). Finally every weight is multiplied by `config.init_scale`.
    """
    with torch.no_grad():
        for layer in weighted_layers(model):
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0, GENERAL_RELU.gain(config.leak) / math.sqrt(fan_in), generator=generator)
        for layer in weighted_layers(model):
            if config.bias_init == "zero":
                nn.init.zeros_(layer.bias)
            else:
                bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in, as nn.Linear and nn.Conv2d do
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
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
        # A fused layer is its own activation: then `layer` and `act` are one module.
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
