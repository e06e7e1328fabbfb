"""The fused kernel against the float64 reference: y, every statistic and all three gradients; the
clamp's tie, a large mean, launch counts, determinism.

Runs under Triton's interpreter without a GPU (conftest sets TRITON_INTERPRET=1), in float32.
bfloat16 and float16 are checked only on a GPU: tl.dot in half precision is unreliable in the interpreter.
"""

import os
import subprocess
import sys

import pytest
import torch
import triton
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT
from kernels import fused_linear_act as kernel
from kernels.fused_linear_act import fused_linear_act, reference_linear_act

BINS, HIST_MAX = 40, 10.0
# The compiled kernel where a GPU is, else the interpreter on the CPU (conftest): the same checks.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (M, N, K): every size of {1, 33, 129, 257} in every position; none a multiple of a tile.
SHAPES = [(1, 1, 1), (1, 33, 129), (33, 129, 257), (129, 257, 1), (257, 1, 33),
          pytest.param(257, 257, 257, marks=pytest.mark.slow)]
# (leak, sub, maxv): leak {0, .3} x sub {0, .4} x maxv {None, 1.5}, each value with each other.
ACTIVATIONS = [(0.0, 0.0, None), (0.3, 0.4, None), (0.3, 0.4, 1.5), (0.0, 0.4, 1.5), (0.3, 0.0, 1.5)]
# single model; a batch of 1; 3 models sharing x (a first layer); 3 models with own x and own leak;
# 3 models with own x given column-major (strided loads) and a column-major weight.
LAYOUTS = ["single", "G1", "G3-shared-x", "G3-own-x", "G3-strided"]
GRAD_TOL = 1e-5  # normwise relative error of dx, dweight, dbias against float64


def make_inputs(M, N, K, layout, leak, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = 1 if layout in ("single", "G1") else 3
    x = torch.randn((M, K) if layout in ("single", "G1", "G3-shared-x") else (G, M, K), generator=gen)
    weight = torch.randn(G, N, K, generator=gen) * 2 / K ** 0.5  # z ~ N(0, 4): clamps at 1.5, spans bins
    bias = torch.randn(G, N, generator=gen)
    if layout == "single":
        weight, bias = weight[0], bias[0]
    if layout == "G3-strided":
        x, weight = x.transpose(1, 2).contiguous().transpose(1, 2), weight.transpose(1, 2).contiguous().transpose(1, 2)
    leak_arg = torch.tensor([leak, leak / 2, 0.0], device=DEVICE) if layout.startswith("G3-") and layout != "G3-shared-x" \
        else leak
    return x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), leak_arg


def near_edge(y64: torch.Tensor) -> torch.Tensor:
    """Values within 1e-6 of a histogram bin edge, per model: float32 and float64 may bin them apart."""
    d = y64.abs() * BINS / HIST_MAX
    return ((d - d.round()).abs() < 1e-6 * BINS / HIST_MAX).flatten(-2).sum(-1)


def normwise(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


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

    # mean and population variance, float64, against float64 throughout.
    assert stats.mean.dtype == stats.var.dtype == torch.float64 and stats.count == ref.count == M * N
    torch.testing.assert_close(stats.mean, ref.mean, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(stats.var, ref.var, rtol=1e-5, atol=1e-10 * scale ** 2)

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
        assert got.grad.shape == want.grad.shape
        assert normwise(got.grad, want.grad) <= GRAD_TOL, name


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 x 16 tiles for every kernel: many programs, so the merge folds several chunks of slots
    (85 tiles, 17 row tiles) and the swizzle spans several groups, as on a GPU."""
    tile = triton.Config({"BLOCK_R": 16, "BLOCK_C": 16, "BLOCK_K": 16, "GROUP_R": 8})
    monkeypatch.setattr(kernel, "SMALLEST_TILE", (16, 16))
    for tuned in (kernel._forward_kernel, kernel._dx_kernel, kernel._dweight_kernel):
        monkeypatch.setattr(tuned, "early_config_prune", lambda configs, named_args, **kwargs: [tile])
        monkeypatch.setattr(tuned, "cache", {})


@pytest.mark.slow
def test_many_tiles_merge_and_reduce_like_one(small_tiles):
    x, weight, bias, leak = make_inputs(257, 65, 17, "G3-shared-x", 0.3)  # dx sums over models and units
    params = [t.clone().requires_grad_() for t in (x, weight, bias)]
    params64 = [t.double().requires_grad_() for t in (x, weight, bias)]
    y, stats = fused_linear_act(*params, leak, 0.4, 1.5)
    y64, ref = reference_linear_act(*params64, leak.double() if torch.is_tensor(leak) else leak, 0.4, 1.5)
    torch.testing.assert_close(y.double(), y64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.mean, ref.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.var, ref.var, rtol=1e-5, atol=0)
    assert torch.equal(stats.hist, ref.hist) and torch.equal(stats.unit_pos, ref.unit_pos)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (y * dy).sum().backward()
    (y64 * dy.double()).sum().backward()
    for name, got, want in zip(("x", "weight", "bias"), params, params64):
        assert normwise(got.grad, want.grad) <= GRAD_TOL, name


def test_gradient_at_the_clamp_is_that_of_clamp_max():
    """z = 2, sub = 0.5, maxv = 1.5: y sits exactly on maxv, where clamp_max passes no gradient."""
    from study.model import GeneralRelu
    x = torch.ones(1, 1, device=DEVICE)
    weight = torch.full((1, 1), 2.0, device=DEVICE, requires_grad=True)
    bias = torch.zeros(1, device=DEVICE, requires_grad=True)
    y, _ = fused_linear_act(x, weight, bias, 0.1, 0.5, 1.5)
    y.sum().backward()

    w_torch = weight.detach().clone().requires_grad_()
    GeneralRelu(0.1, 0.5, 1.5)(x @ w_torch.T).sum().backward()
    w_ref = weight.detach().clone().requires_grad_()
    reference_linear_act(x, w_ref, bias.detach(), 0.1, 0.5, 1.5)[0].sum().backward()
    assert y.item() == 1.5
    assert weight.grad.item() == w_torch.grad.item() == w_ref.grad.item() == 0.0
    assert bias.grad.item() == 0.0


@pytest.mark.parametrize("offset", [1e3, -1e3])
def test_std_is_stable_when_the_mean_is_far_from_zero(offset):
    """mean / std = 1e3: the variance from per-tile (mean, M2) merged in float64 keeps 1e-5 of std."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=gen)
    weight = torch.randn(1, 50, 64, generator=gen) / 64 ** 0.5  # z = N(0, 1) + offset
    bias = torch.full((1, 50), offset)
    y, stats = fused_linear_act(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), 1.0, 0.0)  # leak 1: y = z
    stored = y.double().flatten(1)
    assert abs(stored.mean().item() / stored.std().item()) > 900
    assert stats.var.sqrt().item() == pytest.approx(stored.var(correction=0).sqrt().item(), rel=1e-5)
    assert stats.mean.item() == pytest.approx(stored.mean().item(), rel=1e-9)


def test_statistics_are_bitwise_deterministic():
    x, weight, bias, leak = make_inputs(257, 33, 129, "G3-own-x", 0.3)
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
    assert stats.mean.item() == pytest.approx(ref.mean, rel=1e-6)
    assert stats.var.item() * ref.count / (ref.count - 1) == pytest.approx(ref.std ** 2, rel=1e-5)


def test_without_statistics_y_and_gradients_are_unchanged():
    x, weight, bias, leak = make_inputs(33, 129, 40, "G3-own-x", 0.3)
    runs = []
    for stats in (True, False):
        params = [t.clone().requires_grad_() for t in (x, weight, bias)]
        y, recorded = fused_linear_act(*params, leak, 0.4, 1.5, stats=stats)
        y.sum().backward()
        runs.append((y, *(p.grad for p in params)))
        assert (recorded is None) == (not stats)
    for with_stats, without in zip(*runs):
        assert torch.equal(with_stats, without)


class _Launches:
    """Counts Triton kernel launches (compiled or interpreted) and ops dispatched to tensors."""

    def __init__(self, monkeypatch):
        self.launches = 0
        launcher = type(kernel._forward_kernel.fn)  # JITFunction, or InterpretedFunction in the interpreter
        run = launcher.run

        def counted(fn, *args, **kwargs):
            self.launches += 1
            return run(fn, *args, **kwargs)
        monkeypatch.setattr(launcher, "run", counted)


class _DispatchLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:  # views move no data
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# Allocations and views: they move no data and launch nothing.
NO_DATA_MOVED = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::squeeze",
                 "aten::unsqueeze", "aten::as_strided", "aten::detach", "aten::view", "aten::expand", "aten::select"}
# Under the interpreter, the kernel's arguments travel through host copies; on a GPU nothing does.
INTERPRETER_COPIES = {"aten::copy_", "aten::set_"} if DEVICE == "cpu" else set()


@pytest.mark.parametrize("layout", ["single", "G3-shared-x", "G3-own-x"])
def test_one_forward_is_one_launch_and_backward_at_most_two(layout, monkeypatch):
    x, weight, bias, leak = make_inputs(129, 33, 40, layout, 0.3)
    params = [t.clone().requires_grad_() for t in (x, weight, bias)]
    fused_linear_act(*params, leak, 0.4, 1.5)  # the tickets are made once per device, before this
    count = _Launches(monkeypatch)

    log = _DispatchLog()
    with log, profile(activities=[ProfilerActivity.CPU]) as prof:
        y, stats = fused_linear_act(*params, leak, 0.4, 1.5)
    assert count.launches == 1
    assert log.ops == ["initstudy.fused_linear_act.default"]  # leak, sub, maxv went in as they were
    inside = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert inside <= NO_DATA_MOVED | INTERPRETER_COPIES, inside

    count.launches = 0
    with log, profile(activities=[ProfilerActivity.CPU]) as prof:
        y.backward(torch.ones_like(y))
    assert count.launches == 2
    assert log.ops.count("initstudy.fused_linear_act_backward.default") == 1
    inside = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert inside <= NO_DATA_MOVED | INTERPRETER_COPIES | {"aten::ones_like", "aten::fill_"}, inside
    count.launches = 0
    y, _ = fused_linear_act(params[0].detach(), params[1], params[2], leak, 0.4)
    y.sum().backward()
    assert count.launches == 2  # the forward, and dweight with dbias: no dx wanted


def test_precision_follows_torch_unless_named():
    assert kernel.matmul_precision(None, torch.float32) == "ieee"  # torch's default: "highest"
    torch.set_float32_matmul_precision("high")
    try:
        assert kernel.matmul_precision(None, torch.float32) == "tf32"
        assert kernel.matmul_precision("tf32x3", torch.float32) == "tf32x3"
    finally:
        torch.set_float32_matmul_precision("highest")
    with pytest.raises(ValueError, match="precision must be one of ieee, tf32, tf32x3, got 'fast'"):
        kernel.matmul_precision("fast", torch.float32)


def test_interpreter_tunes_nothing_and_takes_one_tile_as_large_as_the_problem():
    prune = kernel._pruner("M", "N", "K")
    (config,) = prune(kernel.CONFIGS, {"M": 1000, "N": 33, "K": 5})
    assert (config.kwargs["BLOCK_R"], config.kwargs["BLOCK_C"], config.kwargs["BLOCK_K"]) == (512, 64, 16)


def test_reference_passes_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: reference_linear_act(*t, 0.1, 0.4, 2.0)[0], (x, w, b))


@pytest.mark.parametrize("change, message", [
    (lambda x, w, b: (x.double(), w.double(), b.double()), "takes float32, bfloat16 or float16"),
    (lambda x, w, b: (x.int(), w.int(), b.int()), "takes float32, bfloat16 or float16"),
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="half-precision tl.dot is checked on a GPU only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cuda(dtype):
    x, weight, bias, _ = make_inputs(784, 256, 784, "G3-shared-x", 0.1)
    x, weight, bias = (t.cuda().to(dtype) for t in (x, weight, bias))
    y, stats = fused_linear_act(x, weight, bias, 0.1, 0.4)
    y_ref, _ = reference_linear_act(x.double(), weight.double(), bias.double(), 0.1, 0.4)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=5e-2)
    stored = y.double().flatten(1)  # the statistics are of the rounded y that is stored
    torch.testing.assert_close(stats.mean, stored.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.var, stored.var(1, correction=0), rtol=1e-5, atol=1e-6)
