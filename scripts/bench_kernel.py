"""Benchmark the fused kernel: GPU timings on CUDA, the analytic roofline model everywhere.

    python scripts/bench_kernel.py
"""

import sys

from kernels.bench_fused_linear_act import main

sys.exit(main())
