import os
import shutil

import pytest
import torch

from kernels import activation_stats_cpu
from kernels.activation_stats_cpu import layer_stats, reference_layer_stats
from study.model import GeneralRelu
from study.stats import HIST_BINS, HIST_MAX, batched_stats

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler ($CC or cc)")


def grouped(batch: int, models: int, units: int, side: int, channels_last: bool) -> torch.Tensor:
    """A grouped convolution's output as `study.population` splits it: (B, G, C, H, W)."""
    z = torch.empty(batch, models * units, side, side)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    return z.view(batch, models, units, side, side)


# name: (an empty tensor of the layout, its models' dim)
LAYOUTS = {
    "stacked linear": (lambda: torch.empty(3, 16, 33), 0),
    "stacked linear, wide rows": (lambda: torch.empty(2, 5, 600), 0),
    "one linear": (lambda: torch.empty(64, 1, 40), 1),
    "grouped conv, channels-last": (lambda: grouped(6, 4, 8, 5, True), 1),
    "grouped conv, channels-last, wide rows": (lambda: grouped(2, 9, 64, 3, True), 1),
    "grouped conv, positions innermost": (lambda: grouped(5, 3, 4, 6, False), 1),
    "one conv, positions beyond a block": (lambda: grouped(2, 1, 3, 24, False), 1),
    "one conv, channels-last": (lambda: grouped(16, 1, 16, 7, True), 1),
    "grouped conv, one unit a model, channels-last": (lambda: grouped(4, 5, 1, 3, True), 1),
    "grouped conv, one unit a model, positions innermost": (lambda: grouped(4, 5, 1, 3, False), 1),
    "one unit, its dim's stride beyond the tensor": (lambda: torch.empty(1, 3, 4).permute(1, 2, 0), 0),
}


def filled(layout: torch.Tensor, dtype: torch.dtype, leak: float, sub: float, special: bool):
    """pre and act = GeneralRelu(pre) in `layout`'s memory order, with values on bin edges and, if
    `special`, beyond hist_max, infinite and NaN."""
    gen = torch.Generator().manual_seed(2)
    pre = torch.empty_like(layout, dtype=dtype)
    values = torch.randn(pre.numel(), generator=gen, dtype=torch.float64) * 4
    values[::7] = torch.randint(-40, 41, values[::7].shape, generator=gen).double() / 4  # on edges
    if special:
        values[::11] = 25.0
        values[5], values[6], values[9] = float("inf"), -float("inf"), float("nan")
    pre.copy_(values.view(pre.shape))
    act = torch.empty_like(pre)
    act.copy_(GeneralRelu(leak, sub)(pre))
    return pre, act


@needs_compiler
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leak, sub", [(0.0, 0.0), (0.1, 0.4)])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "non-finite"])
def test_one_pass_equals_the_float64_reference(layout, dtype, leak, sub, special):
    make, model_dim = LAYOUTS[layout]
    pre, act = filled(make(), dtype, leak, sub, special)
    got = layer_stats(pre, act, model_dim, HIST_BINS, HIST_MAX)
    want = reference_layer_stats(pre, act, model_dim, HIST_BINS, HIST_MAX)
    assert got is not None
    assert got.count == want.count
    assert torch.equal(got.hist, want.hist)
    assert torch.equal(got.unit_pos, want.unit_pos)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(got.var, want.var, rtol=1e-10, atol=0, equal_nan=True)


@needs_compiler
@pytest.mark.parametrize("offset", [1e3, -1e6])
def test_variance_keeps_its_digits_when_the_mean_is_far_from_zero(offset):
    gen = torch.Generator().manual_seed(0)
    act = (torch.randn(4, 256, 8, generator=gen, dtype=torch.float64) + offset).float()
    got = layer_stats(act, act, 0, HIST_BINS, HIST_MAX)
    want = reference_layer_stats(act, act, 0, HIST_BINS, HIST_MAX)
    torch.testing.assert_close(got.var, want.var, rtol=1e-9, atol=0)


@needs_compiler
def test_a_lane_whose_first_element_is_not_finite_still_sums_the_others():
    act = torch.tensor([[[float("inf")], [1.0], [2.0]], [[3.0], [4.0], [5.0]]])  # (G=2, B=3, N=1)
    got = layer_stats(act, act, 0, HIST_BINS, HIST_MAX)
    assert got.mean[0] == float("inf") and torch.isnan(got.var[0])  # as torch's mean and var give
    assert got.mean[1] == 4.0 and got.var[1] == pytest.approx(2 / 3)


@needs_compiler
def test_a_view_into_a_larger_tensor_is_read_at_its_own_place():
    pre, act = filled(torch.empty(2, 3, 16, 33), torch.float32, 0.1, 0.4, False)
    got = layer_stats(pre[1], act[1], 0, HIST_BINS, HIST_MAX)
    want = reference_layer_stats(pre[1], act[1], 0, HIST_BINS, HIST_MAX)
    assert torch.equal(got.hist, want.hist) and torch.equal(got.unit_pos, want.unit_pos)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)


def not_dense():
    return torch.empty(2, 8, 10)[:, :, ::2]


def rows_between_models_and_units():
    return torch.empty(10, 3, 4).permute(2, 1, 0)  # (B, G, N) with G's stride between N's and B's


@pytest.mark.parametrize("pre, act, model_dim", [
    (torch.empty(2, 8, 5), not_dense(), 0),
    (rows_between_models_and_units(), rows_between_models_and_units(), 1),
    (torch.empty(2, 8, 5), torch.empty(2, 5, 8).transpose(1, 2), 0),  # pre and act laid out differently
    (torch.empty(2, 8, 5, dtype=torch.float16), torch.empty(2, 8, 5, dtype=torch.float16), 0),
    (torch.empty(2, 8, 5, dtype=torch.int32), torch.empty(2, 8, 5, dtype=torch.int32), 0),
    (torch.empty(2, 8, 5, device="meta"), torch.empty(2, 8, 5), 0),
], ids=["not dense", "rows between models and units", "different layouts", "float16", "int32", "pre elsewhere"])
def test_what_the_loop_does_not_take_is_left_to_pytorch(pre, act, model_dim):
    assert layer_stats(pre, act, model_dim, HIST_BINS, HIST_MAX) is None


@needs_compiler
def test_built_once_into_the_cache_and_loaded_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("INITSTUDY_CACHE", str(tmp_path))
    activation_stats_cpu._library.cache_clear()
    try:
        assert activation_stats_cpu.available()
        built = list((tmp_path / "kernels").iterdir())
        assert [p.suffix for p in built] == [".so"]  # the build's scratch directory is gone
        activation_stats_cpu._library.cache_clear()
        stamp = built[0].stat().st_mtime_ns
        assert activation_stats_cpu.available() and built[0].stat().st_mtime_ns == stamp  # not built again
    finally:
        activation_stats_cpu._library.cache_clear()


def test_without_a_compiler_the_statistics_come_from_pytorch(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    activation_stats_cpu._library.cache_clear()
    try:
        pre, act = filled(LAYOUTS["one conv, channels-last"][0](), torch.float32, 0.1, 0.4, False)
        assert layer_stats(pre, act, 1, HIST_BINS, HIST_MAX) is None
        stats = batched_stats(pre, act, 1)
        want = reference_layer_stats(pre, act, 1, HIST_BINS, HIST_MAX)
        assert torch.equal(stats.hist.long(), want.hist) and torch.equal(stats.unit_pos, want.unit_pos)
    finally:
        activation_stats_cpu._library.cache_clear()
