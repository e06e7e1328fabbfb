"""Benchmark the fused kernel against its targets: GPU timings on CUDA, the labelled prediction everywhere.

    python scripts/bench_kernel.py [FILE]     # prints the table; FILE (optional) gets a copy

The same table as `python -m study bench kernel`. It calls the benchmark directly, not through the
command line, so that a bare GPU machine with torch and triton alone runs it (scripts/gpu_check.sh).
"""

import sys
from pathlib import Path

from benchmarks.fused_linear_act import report

table = report()
print(table)
if len(sys.argv) > 1:
    Path(sys.argv[1]).write_text(table + "\n")
