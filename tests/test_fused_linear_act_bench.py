"""The benchmark's analytic model: its arithmetic by hand, and the report on a machine without a GPU."""

import pytest
import torch

from benchmarks.fused_linear_act import UNFUSED_PASSES, predict, report


def test_model_counts_flops_and_bytes():
    p = predict(G=2, M=128, K=64, N=64, shared_x=False)
    assert p.flops == 2 * 2 * 128 * 64 * 64
    x, w, y = 2 * 128 * 64 * 4, 2 * (64 * 64 + 64) * 4, 2 * 128 * 64 * 4
    tiles = 2 * 2 * 1  # 64x64 tiles: 2 along M, 1 along N, per model
    partials = tiles * 42 * 4 + 2 * 2 * 64 * 4
    assert p.gemm_bytes == x + w + y
    assert p.fused_bytes == x + w + y + 2 * 128 * 64 + partials  # + one byte of slope code per element
    assert p.unfused_bytes == x + w + 2 * 128 * 64 * sum(UNFUSED_PASSES.values())


def test_shared_x_is_read_once():
    shared, own = predict(8, 1024, 784, 256, True), predict(8, 1024, 784, 256, False)
    assert own.gemm_bytes - shared.gemm_bytes == 7 * 1024 * 784 * 4


def test_fusion_pays_more_as_models_are_batched():
    ratios = [predict(G, 1024, 256, 256, False).unfused_seconds / predict(G, 1024, 256, 256, False).fused_seconds
              for G in (1, 8, 64)]
    assert ratios == sorted(ratios) and ratios[0] > 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the report holds timings instead")
def test_report_says_no_gpu_timing_was_taken():
    text = report()
    assert "NO GPU TIMING WAS TAKEN" in text and "prediction" in text
    assert text.count("| MLP") == 6
