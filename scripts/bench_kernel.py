"""Benchmark the fused kernel: GPU timings on CUDA, the analytic roofline model everywhere.

    python scripts/bench_kernel.py
"""

import sys

from study.cli import main

sys.exit(main(["bench", "kernel", *sys.argv[1:]]))
