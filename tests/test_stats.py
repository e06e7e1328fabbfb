import math

import pytest
import torch
from torch import nn

from study.model import GeneralRelu
from study.stats import CHUNK_ELEMENTS, HIST_BINS, HIST_MAX, LayerRecords, StatsRecorder, activation_stats, batched_stats


def reference_hist(values: torch.Tensor, bins: int, hist_max: float) -> torch.Tensor:
    """torch.histc's rule in float64, one value at a time: bin floor(v * bins / max), v == max in
    the last bin, v outside [0, max] not counted."""
    counts = torch.zeros(bins, dtype=torch.float64)
    for v in values.abs().flatten().tolist():
        if 0 <= v <= hist_max:
            counts[min(int(math.floor(v * bins / hist_max)), bins - 1)] += 1
    return counts


def away_from_edges(x: torch.Tensor, bins: int, hist_max: float) -> torch.Tensor:
    """Move values within 1e-6 of a bin edge off it: there float32 and float64 may choose
    neighbouring bins, which is rounding, not a disagreement about the rule."""
    width = hist_max / bins
    frac = (x.abs() / width) % 1
    near = (frac < 1e-5) | (frac > 1 - 1e-5)
    return torch.where(near, x + 0.5 * width * torch.sign(x), x)


@pytest.mark.parametrize("shape", [(7, 33), (64, 256), (3, 8, 5, 5)])
@pytest.mark.parametrize("leak, sub", [(0.0, 0.0), (0.1, 0.4), (0.5, 0.9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_stats_match_float64_reference(shape, leak, sub, dtype):
    gen = torch.Generator().manual_seed(0)
    pre = away_from_edges(torch.randn(shape, generator=gen, dtype=torch.float64) * 4, HIST_BINS, HIST_MAX)
    act = GeneralRelu(leak, sub)(pre)
    act = away_from_edges(act, HIST_BINS, HIST_MAX)
    stats = activation_stats(pre.to(dtype), act.to(dtype))

    assert stats.count == act.numel()
    assert stats.sum.item() == pytest.approx(act.sum().item(), rel=1e-5, abs=1e-4)
    assert stats.sumsq.item() == pytest.approx((act ** 2).sum().item(), rel=1e-5)
    assert stats.mean == pytest.approx(act.mean().item(), rel=1e-4, abs=1e-5)
    assert stats.std == pytest.approx(act.std().item(), rel=1e-4)
    assert torch.equal(stats.hist.double(), reference_hist(act, HIST_BINS, HIST_MAX))
    units = shape[1]
    expected_pos = [(pre.select(1, u) > 0).sum().item() for u in range(units)]
    assert stats.unit_pos.tolist() == expected_pos


def test_histogram_edges_follow_histc():
    act = torch.tensor([0.0, 0.2499, 0.25, 9.99, 10.0, 10.01, -10.0, -0.1], dtype=torch.float64)
    stats = activation_stats(act.unsqueeze(0), act.unsqueeze(0))
    hist = stats.hist.tolist()
    assert hist[0] == 3  # 0, 0.2499 and |-0.1|
    assert hist[1] == 1  # 0.25 opens the second bin
    assert hist[-1] == 3  # 9.99, 10 and |-10|: the upper edge belongs to the last bin
    assert sum(hist) == 7  # 10.01 lies outside [0, 10] and is not counted


def model_slices(x: torch.Tensor, model_dim: int) -> list[torch.Tensor]:
    """Each model's tensor with its units at dim 1, as one model's layer has them."""
    return [x.select(model_dim, g) if model_dim == 1 else x.select(0, g) for g in range(x.shape[model_dim])]


@pytest.mark.parametrize("shape, model_dim", [((1, 64, 256), 0), ((3, 16, 33), 0), ((8, 1, 5, 4, 4), 1),
                                              ((8, 4, 6, 3, 3), 1)])
@pytest.mark.parametrize("leak, sub", [(0.0, 0.0), (0.1, 0.4), (0.5, -0.25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beyond", [True, False], ids=["beyond-hist-max", "within-hist-max"])
@pytest.mark.parametrize("compiled, chunk_elements", [(True, CHUNK_ELEMENTS), (False, CHUNK_ELEMENTS), (False, 100)],
                         ids=["one-pass-loop", "passes-one-chunk", "passes-chunks-of-rows"])
def test_batched_stats_equal_the_reference_of_each_model(shape, model_dim, leak, sub, dtype, beyond, compiled,
                                                         chunk_elements):
    gen = torch.Generator().manual_seed(1)
    pre = (torch.randn(shape, generator=gen, dtype=dtype) * 4)
    pre.view(-1)[::7] = torch.randint(-40, 41, pre.view(-1)[::7].shape, generator=gen).to(dtype) / 4  # on edges
    if not beyond:  # the common case, which skips the passes for |a| >= hist_max
        pre = pre.clamp(-9.5, 9.5)
    act = GeneralRelu(leak, sub)(pre)
    assert (act.abs().max() >= HIST_MAX) == beyond
    stats = batched_stats(pre, act, model_dim, chunk_elements=chunk_elements, compiled=compiled)
    for g, (p, a) in enumerate(zip(model_slices(pre, model_dim), model_slices(act, model_dim))):
        ref = activation_stats(p, a)
        one = stats.member(g)
        assert one.count == ref.count
        assert torch.equal(one.hist, ref.hist.to(one.hist.dtype))
        assert torch.equal(one.unit_pos, ref.unit_pos)
        assert one.sum.item() == pytest.approx(ref.sum.item(), rel=1e-5, abs=1e-3)
        assert one.sumsq.item() == pytest.approx(ref.sumsq.item(), rel=1e-5)
        summary = stats.summaries()
        assert summary["mean"][g] == pytest.approx(ref.mean, rel=1e-4, abs=1e-5)
        assert summary["std"][g] == pytest.approx(ref.std, rel=1e-4)
        assert summary["dead_units"][g] == ref.dead_units
        assert summary["near_zero_frac"][g] == pytest.approx(ref.near_zero_frac)


@pytest.mark.parametrize("model_dim", [0, 1])
@pytest.mark.parametrize("compiled, chunk_elements", [(True, CHUNK_ELEMENTS), (False, CHUNK_ELEMENTS), (False, 500)],
                         ids=["one-pass-loop", "passes-one-chunk", "passes-chunks-of-rows"])
def test_batched_std_is_stable_when_the_mean_is_far_from_zero(model_dim, compiled, chunk_elements):
    """mean / std = 1e3 in float32: the std keeps 1e-5 (raw sums of squares would be 10x off)."""
    gen = torch.Generator().manual_seed(0)
    act = torch.randn(2, 64, 40, generator=gen) + torch.tensor([1e3, -1e3]).view(2, 1, 1)
    act = act if model_dim == 0 else act.transpose(0, 1)
    stats = batched_stats(act, act, model_dim, chunk_elements=chunk_elements, compiled=compiled)
    for g, member in enumerate(model_slices(act.double(), model_dim)):
        assert stats.summaries()["std"][g] == pytest.approx(member.std().item(), rel=1e-5)
        assert stats.summaries()["mean"][g] == pytest.approx(member.mean().item(), rel=1e-6)  # float32's own


@pytest.mark.parametrize("compiled", [True, False], ids=["one-pass-loop", "passes"])
def test_batched_histogram_edges_and_non_finite_values_follow_histc(compiled):
    act = torch.tensor([0.0, 0.2499, 0.25, 9.99, 10.0, 10.01, -10.0, -0.1, float("nan"), float("inf"),
                        -float("inf")])
    stats = batched_stats(act.view(1, 1, -1), act.view(1, 1, -1), 0, compiled=compiled)
    assert torch.equal(stats.hist[0], torch.histc(act.abs(), HIST_BINS, 0, HIST_MAX))
    assert stats.hist[0, 0] == 3 and stats.hist[0, -1] == 3 and stats.hist.sum() == 7


@pytest.mark.parametrize("compiled", [True, False], ids=["one-pass-loop", "passes"])
@pytest.mark.parametrize("positive", [True, False], ids=["pre-positive", "pre-negative"])
def test_values_just_below_a_bin_edge_stay_in_their_bin(compiled, positive):
    """The float32 value next below each edge, where the edge itself would open the next bin."""
    edges = torch.tensor([0.25, 0.5, 0.75, 2.0, 9.75])
    act = torch.nextafter(edges, torch.zeros(()))
    pre = act if positive else -act
    stats = batched_stats(pre.view(1, 1, -1), act.view(1, 1, -1), 0, compiled=compiled)
    assert stats.hist[0].nonzero().flatten().tolist() == [0, 1, 2, 7, 38]
    assert torch.equal(stats.hist[0], torch.histc(act, HIST_BINS, 0, HIST_MAX))


def test_layer_records_follow_a_model_that_leaves_the_batch():
    records = LayerRecords()
    pre = torch.randn(3, 8, 5)
    for step, models in [(0, [0, 1, 2]), (1, [0, 2]), (2, [2])]:
        rows = pre[:len(models)] + step
        records.add(step, batched_stats(rows, rows, 0), models)
    assert records.history(1).steps == [0]
    assert records.history(2).steps == [0, 1, 2]
    assert records.history(2).mean[2] == pytest.approx((pre[0] + 2).mean().item(), rel=1e-5)
    assert records.history(2).mean[0] == pytest.approx(pre[2].mean().item(), rel=1e-5)


def test_near_zero_and_dead_units():
    pre = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -2.0, -3.0]])  # unit 0 and 2 never positive
    act = GeneralRelu(0.0, 0.0)(pre)
    stats = activation_stats(pre, act)
    assert stats.unit_pos.tolist() == [0, 1, 0]
    assert stats.dead_units == 2
    assert stats.near_zero_frac == pytest.approx(5 / 6)  # five zeros, one 2.0


def test_sub_moves_off_units_out_of_the_lowest_bin():
    """The lesson's caveat: with sub 0.4 an off unit outputs -0.4, which lies in the second bin."""
    pre = -torch.ones(4, 10)
    stats = activation_stats(pre, GeneralRelu(0.0, 0.4)(pre))
    assert stats.near_zero_frac == 0 and stats.dead_units == 10
    assert stats.hist[1].item() == 40


def test_recorder_records_only_when_asked_and_removes_its_hooks():
    net = nn.Sequential(nn.Linear(4, 6), GeneralRelu(0.1, 0.4), nn.Linear(6, 3), GeneralRelu())
    acts = [net[1], net[3]]
    x = torch.randn(8, 4)
    with StatsRecorder(acts) as recorder:
        for step in range(5):
            recorder.step, recorder.recording = step, step % 2 == 0
            net(x)
    history = recorder.history()
    assert [layer.steps for layer in history] == [[0, 2, 4], [0, 2, 4]]
    assert [layer.units for layer in history] == [6, 3]
    assert len(history[0].hist) == 3 and len(history[0].hist[0]) == HIST_BINS
    assert all(not m._forward_hooks for m in acts)
    final = history[0].final()
    assert set(final) == {"mean", "std", "near_zero_frac", "dead_units", "units"}


def test_recorder_has_a_fused_layer_skip_its_statistics_on_passes_it_does_not_record():
    from study.model import FusedLinearAct, fused_kernel
    layer = FusedLinearAct(4, 6, 0.1, 0.4, None)
    x = torch.randn(8, 4)
    kept = []
    with StatsRecorder([layer]) as recorder:
        for step in range(3):
            recorder.step, recorder.recording = step, step != 1
            layer(x)
            kept.append(layer.last_stats)
    assert [stats is None for stats in kept] == [False, True, False]
    assert recorder.history()[0].steps == [0, 2]
    assert layer.record_stats and not layer._forward_pre_hooks
    y, stats = fused_kernel().fused_linear_act(x, layer.weight, layer.bias, 0.1, 0.4)
    reference = activation_stats(x @ layer.weight.T + layer.bias, y)
    assert recorder.history()[0].mean[-1] == pytest.approx(reference.mean, rel=1e-6)
    assert recorder.history()[0].std[-1] == pytest.approx(reference.std, rel=1e-5)


def test_recorder_removes_hooks_after_an_error():
    act = GeneralRelu()
    with pytest.raises(RuntimeError):
        with StatsRecorder([act]):
            raise RuntimeError("boom")
    assert not act._forward_hooks
