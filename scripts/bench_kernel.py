"""Benchmark the fused kernel: GPU timings on CUDA, the analytic roofline model everywhere.

    python scripts/bench_kernel.py > table.txt     # the same table as `python -m study bench kernel`

It calls the benchmark directly, not through the command line, so that a bare GPU machine with
torch and triton alone runs it (scripts/gpu_check.sh).
"""

from benchmarks.fused_linear_act import report

print(report())
