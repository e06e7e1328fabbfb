"""The fused kernel against the float64 reference: y, every statistic and all three gradients.

Runs under Triton's interpreter without a GPU (conftest sets TRITON_INTERPRET=1), in float32.
bfloat16 is checked only on a GPU: tl.dot in bf16 is unreliable in the interpreter.
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from kernels.fused_linear_act import fused_linear_act, reference_linear_act

BINS, HIST_MAX = 40, 10.0
# The compiled kernel where a GPU is, else the interpreter on the CPU (conftest): the same checks.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (M, N, K): every size in {1, 7, 33, 784} in every position, none a multiple of a tile.
SHAPES = [(1, 1, 1), (1, 7, 33), (7, 33, 1), (33, 1, 7), (33, 33, 784), (784, 7, 33), (7, 784, 33)]
# (leak, sub, maxv): leak {0, .1, .5} x sub {0, .4} x maxv {None, 6}, each value at least once.
ACTIVATIONS = [(0.0, 0.0, None), (0.1, 0.4, None), (0.5, 0.4, 6.0), (0.1, 0.0, 6.0), (0.5, 0.0, None)]
# single model; a batch of 1; 3 models sharing x (a first layer); 3 models with own x and own leak.
LAYOUTS = ["single", "G1", "G3-shared-x", "G3-own-x"]


def make_inputs(M, N, K, layout, leak, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = 1 if layout in ("single", "G1") else 3
    x = torch.randn((G, M, K) if layout == "G3-own-x" else (M, K), generator=gen)
    weight = torch.randn(G, N, K, generator=gen) * 3 / K ** 0.5  # z ~ N(0, 9): clamps at 6, spans bins
    bias = torch.randn(G, N, generator=gen)
    if layout == "single":
        weight, bias = weight[0], bias[0]
    leak_arg = torch.tensor([leak, leak / 2, 0.0], device=DEVICE) if layout == "G3-own-x" else leak
    return x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), leak_arg


def near_edge(y64: torch.Tensor) -> torch.Tensor:
    """Values within 1e-6 of a histogram bin edge, per model: float32 and float64 may bin them apart."""
    d = y64.abs() * BINS / HIST_MAX
    return ((d - d.round()).abs() < 1e-6 * BINS / HIST_MAX).flatten(-2).sum(-1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("leak, sub, maxv", ACTIVATIONS)
@pytest.mark.parametrize("M, N, K", SHAPES)
def test_forward_statistics_and_gradients_match_float64(M, N, K, layout, leak, sub, maxv):
    x, weight, bias, leak_arg = make_inputs(M, N, K, layout, leak)
    params = [t.clone().requires_grad_() for t in (x, weight, bias)]
    params64 = [t.double().requires_grad_() for t in (x, weight, bias)]
    leak64 = leak_arg.double() if isinstance(leak_arg, torch.Tensor) else leak_arg

    y, stats = fused_linear_act(*params, leak_arg, sub, maxv)
    y64, ref = reference_linear_act(*params64, leak64, sub, maxv)

    # y: float32 accumulation of K products against float64.
    scale = 1 + y64.abs().max().item()
    assert y.dtype == torch.float32 and y.shape == y64.shape
    torch.testing.assert_close(y.double(), y64.detach(), rtol=1e-5, atol=1e-5 * scale)

    # Sums: float32 tiles reduced in float64, against float64 throughout.
    mass = y64.detach().abs().flatten(-2).sum(-1)
    torch.testing.assert_close(stats.sum.double(), ref.sum.double(), rtol=0, atol=1e-5 * (1 + mass.max().item()))
    torch.testing.assert_close(stats.sumsq.double(), ref.sumsq.double(), rtol=1e-5, atol=1e-5)
    assert stats.count == ref.count == M * N

    # Histogram: exact, except values within 1e-6 of a bin edge, which may move to the next bin.
    edge = near_edge(y64.detach())
    moved = (stats.hist - ref.hist).abs().sum(-1)
    assert torch.all(moved <= 2 * edge), (moved, edge)
    assert stats.hist.shape == ref.hist.shape and stats.hist.dtype == torch.int64

    # Units with a positive pre-activation: exact, except z within 1e-5 of 0.
    z64 = torch.matmul(params64[0], params64[1].transpose(-1, -2)) + params64[2].unsqueeze(-2)
    undecided = (z64.detach().abs() < 1e-5).sum(-2)
    assert torch.all((stats.unit_pos - ref.unit_pos).abs() <= undecided)

    # Gradients of a random projection of y, for x, weight and bias.
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (y * dy).sum().backward()
    (y64 * dy.double()).sum().backward()
    for name, got, want in zip(("x", "weight", "bias"), params, params64):
        g_scale = 1 + want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5 * g_scale, msg=name)


def test_statistics_are_bitwise_deterministic():
    x, weight, bias, leak = make_inputs(784, 33, 784, "G3-own-x", 0.1)
    first = fused_linear_act(x, weight, bias, leak, 0.4)[1]
    second = fused_linear_act(x, weight, bias, leak, 0.4)[1]
    for a, b in zip(first[:4], second[:4]):
        assert torch.equal(a, b)


def test_statistics_are_those_of_study_stats():
    """The kernel's statistics are the project's reference semantics (study/stats.py)."""
    from study.stats import activation_stats
    x, weight, bias, _ = make_inputs(64, 33, 40, "single", 0.1)
    y, stats = fused_linear_act(x, weight, bias, 0.1, 0.4)
    z = x @ weight.T + bias
    ref = activation_stats(z, y)
    assert torch.equal(stats.hist, ref.hist.long())
    assert torch.equal(stats.unit_pos, ref.unit_pos)
    assert stats.sum.item() == pytest.approx(ref.sum.item(), rel=1e-5)


def test_non_contiguous_inputs_are_handled():
    x, weight, bias, _ = make_inputs(33, 7, 40, "single", 0.1)
    x_t = x.t().contiguous().t()  # same values, column-major
    w_t = weight.t().contiguous().t()
    y, _ = fused_linear_act(x_t, w_t, bias, 0.1, 0.4)
    y_ref, _ = fused_linear_act(x, weight, bias, 0.1, 0.4)
    assert not x_t.is_contiguous() and torch.equal(y, y_ref)


def test_reference_passes_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: reference_linear_act(*t, 0.1, 0.4, 2.0)[0], (x, w, b))


@pytest.mark.parametrize("change, message", [
    (lambda x, w, b: (x.double(), w.double(), b.double()), "takes float32 or bfloat16"),
    (lambda x, w, b: (x.half(), w.half(), b.half()), "takes float32 or bfloat16"),
    (lambda x, w, b: (x[:, :3], w, b), "shapes do not fit"),
    (lambda x, w, b: (x, w, b[:2]), "shapes do not fit"),
    (lambda x, w, b: (x[None], w[None], b), "expected x (M, K) or (G, M, K), weight (G, N, K), bias (G, N)"),
    (lambda x, w, b: (x[None], w, b), "single model: expected x (M, K), weight (N, K), bias (N,)"),
])
def test_unsupported_inputs_are_refused_with_a_message(change, message):
    x, weight, bias, _ = make_inputs(7, 5, 4, "single", 0.1)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fused_linear_act(*change(x, weight, bias), 0.1, 0.4)


def test_per_model_activation_must_have_one_value_per_model():
    x, weight, bias, _ = make_inputs(7, 5, 4, "G3-shared-x", 0.1)
    with pytest.raises(ValueError, match=r"leak must be a float or a \(3,\) tensor"):
        fused_linear_act(x, weight, bias, torch.tensor([0.1, 0.2]), 0.4)


def test_cpu_without_the_interpreter_is_refused():
    code = ("import torch\nfrom kernels.fused_linear_act import fused_linear_act\n"
            "fused_linear_act(torch.ones(2, 2), torch.ones(3, 2), torch.ones(3), 0.1, 0.4)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "runs on CUDA tensors, or on the CPU under Triton's interpreter" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 tl.dot is checked on a GPU only")
def test_bfloat16_on_cuda():
    x, weight, bias, _ = make_inputs(784, 256, 784, "G3-shared-x", 0.1)
    x, weight, bias = (t.cuda().bfloat16() for t in (x, weight, bias))
    y, stats = fused_linear_act(x, weight, bias, 0.1, 0.4)
    y_ref, _ = reference_linear_act(x.double(), weight.double(), bias.double(), 0.1, 0.4)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=5e-2)
