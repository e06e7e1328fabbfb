"""The kernel benchmark: its cases compute what they claim (run here under the interpreter), its
prediction's arithmetic, and its report on a machine without a GPU."""


import pytest
import torch

from benchmarks import fused_linear_act as bench

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("G", [1, pytest.param(64, marks=pytest.mark.slow)])
def test_fused_and_bare_layer_cases_compute_the_same(G):
    cases = bench.layer_cases(G, DEVICE)
    y, stats = cases["fused forward"]()
    z = cases["bare forward"]()
    want = torch.where(z > 0, z, 0.1 * z) - 0.4
    torch.testing.assert_close(y.reshape(want.shape), want, rtol=1e-5, atol=1e-4)
    assert stats.count == bench.M * bench.N
    dx, dweight, _ = cases["fused backward"]()
    dx_bare, dweight_bare = cases["bare backward"]()
    torch.testing.assert_close(dx, dx_bare, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dweight, dweight_bare, rtol=1e-4, atol=1e-3)


def test_training_cases_take_the_same_step():
    steps = bench.training_cases(DEVICE)
    fused = [steps["fused step"]().item() for _ in range(2)]
    eager = [steps["eager step"]().item() for _ in range(2)]
    assert fused == pytest.approx(eager, abs=1e-4) and fused[1] < fused[0]


def test_prediction_is_compute_bound_by_occupancy_at_one_model():
    p = bench.predict(1, "ieee", tile=(64, 64))
    assert p.ctas == 64
    flops = 2 * 1024 * 256 * 784
    compute = flops / (bench.H100_FLOPS["ieee"] * 64 / 132)
    merge = (1 + 1 + 1) * bench.ROUND_TRIP_SECONDS  # ticket, the 64 tiles' slots, the 16 row tiles' counts
    assert p.fused_seconds == pytest.approx(compute + bench.LAUNCH_SECONDS + merge)
    assert p.gemm_seconds == pytest.approx(flops / bench.H100_FLOPS["ieee"] + bench.LAUNCH_SECONDS)


def test_the_best_tile_fills_more_of_the_machine_at_one_model():
    best = bench.best_prediction(1, "ieee")
    assert best.tile == (32, 64) and best.ctas == 128
    assert best.fused_seconds < bench.predict(1, "ieee", tile=(64, 64)).fused_seconds



@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_the_model_predicts_that_64_models_meet_the_target_one_model_misses(precision):
    one, many = bench.best_prediction(1, precision), bench.best_prediction(64, precision)
    for p in (one, many):
        assert p.ratio == pytest.approx(p.fused_seconds / p.gemm_seconds)
    assert many.ratio < one.ratio  # the launch and the merge's round trips, paid once for 64 models
    assert many.ratio <= bench.TARGETS["forward G=64"] < one.ratio


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the report holds timings instead")
def test_report_says_no_gpu_timing_was_taken():
    text = bench.report()
    assert "NO GPU TIMING WAS TAKEN" in text and "not a measurement" in text
    assert text.count("| forward G=") == 4
