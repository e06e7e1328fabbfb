"""The activation, declared once: GeneralRelu(leak, sub, maxv) = clamp_max(leaky_relu(x, leak) - sub, maxv),
fast.ai's (miniai/activations.py); leak 0 and sub 0 is a plain ReLU, maxv None no clamp.

Everything that computes it takes it from here: a single model's module (`study.model.GeneralRelu`),
a population's per-member form (`batched`), the initialisation's Kaiming gain (`gain`), the
mean-field moments of the signal-propagation experiment (`moments`, `pair_moment`) and the fused
kernel's epilogue, which `kernels/fused_linear_act.py` picks by `kernel_name`. A second activation
would be one more declaration like `GENERAL_RELU` and one more epilogue branch in the kernel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class _PerMember(torch.autograd.Function):
    """`leaky_relu(z, leak) - sub` with leak and sub per member (broadcast against z).

    max(z, leak * z) is the leaky ReLU for leak in [0, 1). Saving only z and taking the slope from
    its sign in backward costs fewer passes than autograd's `where` or `maximum` (MEASUREMENTS.md).
    """

    @staticmethod
    def forward(ctx, z, leak, sub):
        ctx.save_for_backward(z, leak)
        return torch.maximum(z, z * leak).sub_(sub)

    @staticmethod
    def backward(ctx, grad):
        z, leak = ctx.saved_tensors
        return torch.where(z > 0, grad, grad * leak), None, None


class GeneralReluActivation:
    """The declaration; `GENERAL_RELU` is its one instance."""

    name = "GeneralRelu"
    kernel_name = "general_relu"  # the fused kernel's epilogue (kernels.fused_linear_act.ACTIVATIONS)

    @staticmethod
    def forward(x: torch.Tensor, leak: float, sub: float, maxv: float | None) -> torch.Tensor:
        """One model's activation, leak, sub and maxv plain numbers."""
        x = F.leaky_relu(x, leak) if leak else F.relu(x)
        x = x - sub
        return x if maxv is None else x.clamp_max(maxv)

    @staticmethod
    def batched(z: torch.Tensor, leak: torch.Tensor, sub: torch.Tensor, maxv: float | None) -> torch.Tensor:
        """A population's: leak and sub tensors broadcast against z, a member's values on its slice."""
        # In z's dtype: under bfloat16 autocast, float32 leak and sub would promote the activation.
        y = _PerMember.apply(z, leak.to(z.dtype), sub.to(z.dtype))
        return y if maxv is None else y.clamp_max(maxv)

    @staticmethod
    def gain(leak: float) -> float:
        """Kaiming's gain for this activation, sqrt(2 / (1 + leak^2)): the weight std that keeps a
        pre-activation's variance from layer to layer with sub = 0 (as torch.nn.init computes it)."""
        return math.sqrt(2.0 / (1 + leak ** 2))

    @staticmethod
    def moments(q: np.ndarray, leak: float, sub: float) -> tuple[np.ndarray, np.ndarray]:
        """(E[a], E[a^2]) for a = leaky_relu(z, leak) - sub, z ~ N(0, q) (no clamp)."""
        first = (1 - leak) * np.sqrt(q / (2 * np.pi))
        second = (1 + leak ** 2) * q / 2
        return first - sub, second - 2 * sub * first + sub ** 2

    @staticmethod
    def pair_moment(q1: np.ndarray, q2: np.ndarray, q12: np.ndarray, leak: float, sub: float) -> np.ndarray:
        """E[a(z1) a(z2)] for (z1, z2) centred Gaussian with variances q1, q2 and covariance q12: Cho
        and Saul's arc-cosine kernel for the ReLU part."""
        c = np.clip(q12 / np.sqrt(q1 * q2), -1.0, 1.0)
        theta = np.arccos(c)
        ff = (1 - leak) ** 2 * np.sqrt(q1 * q2) * (np.sin(theta) + (np.pi - theta) * c) / (2 * np.pi) + leak * q12
        f1, f2 = ((1 - leak) * np.sqrt(q / (2 * np.pi)) for q in (q1, q2))
        return ff - sub * (f1 + f2) + sub ** 2


GENERAL_RELU = GeneralReluActivation()
