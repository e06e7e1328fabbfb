"""The study benchmarks (benchmarks/study_speed.py, benchmarks/quick_study.py): FLOP counts, the quick
study's table, and one real run of a few rows from the command line."""

import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error, run_cli
from benchmarks.quick_study import QuickStudy, plain_cnn, quick_table
from benchmarks.study_speed import Measured, gpu_population_prediction, table, train_flops


def test_train_flops_count_every_layer_three_times():
    mlp_forward = 2 * (784 * 256 + 256 * 256 + 256 * 256 + 256 * 10)
    assert train_flops("mlp") == 3 * mlp_forward * 50_000
    # 28 -> 14 -> 7 -> 4 -> 2 -> 1, 3x3 kernels, channels 1, 8, 16, 32, 64, 10
    cnn_forward = 2 * 9 * (1 * 8 * 14 ** 2 + 8 * 16 * 7 ** 2 + 16 * 32 * 4 ** 2 + 32 * 64 * 2 ** 2 + 64 * 10 * 1)
    assert train_flops("cnn") == 3 * cnn_forward * 50_000


def test_table_rates_are_relative_to_rows_a_and_b():
    results = {("mlp", "a"): Measured(1, 2.0, 500), ("mlp", "b"): Measured(1, 1.0, 600),
               ("mlp", "d8"): Measured(8, 4.0, 900)}
    lines = table(results, mm_gflops=200.0).splitlines()
    assert lines[2].split("|")[3:6] == [" 0.500 ", " 1.00 ", " 0.50 "]
    assert lines[4].split("|")[3:6] == [" 2.000 ", " 4.00 ", " 2.00 "]
    assert "PREDICTION" in gpu_population_prediction()


@pytest.mark.slow
def test_bench_study_prints_a_table_of_the_rows_asked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "study", "bench", "study", "--models", "mlp",
                           "--rows", "a,c,d8"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| mlp |")]
    assert [r.split("|")[2].strip()[:3] for r in rows] == ["(a)", "(c)", "(d)"]
    rates = [float(r.split("|")[3]) for r in rows]
    assert all(rate > 0.05 for rate in rates)
    assert "bare torch.mm" in proc.stdout and f"torch {torch.__version__}," in proc.stdout


def test_the_plain_epochs_network_is_the_lessons_cnn_with_relu():
    from study.config import ModelConfig
    from study.model import build_model

    plain, ours = plain_cnn(), build_model(ModelConfig(model="cnn"))
    assert [p.shape for p in plain.parameters()] == [p.shape for p in ours.parameters()]
    assert sum(isinstance(m, torch.nn.ReLU) for m in plain) == 4
    assert plain(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_the_quick_study_is_measured_in_plain_epochs_and_time_outside_training():
    lines = quick_table(plain=0.5, quick=QuickStudy(wall=40.0, workers=2, training=60.0)).splitlines()
    assert lines[3].split("|")[2:4] == [" 40.0 ", " 80 "]  # 40 s = 80 epochs of 0.5 s
    assert lines[5].split("|")[2] == " 25% "  # 60 of 2 x 40 worker-seconds trained


def test_bench_study_refuses_an_unknown_row_in_one_line():
    proc = run_cli("bench", "study", "--rows", "a,quik")
    assert_one_line_error(proc, "no benchmark row or model 'quik'")
