#!/usr/bin/env bash
# The fused kernel on a CUDA machine that has torch, triton and pytest (nothing else is needed):
# its float64-referenced tests and the benchmark's own tests compiled for the GPU, then the
# benchmark table (targets, host and CUDA-graph timings, torch.compile). About 5 minutes.
#   bash scripts/gpu_check.sh DIR    -> DIR/gpu.txt, DIR/tests.txt, DIR/bench_kernel.txt
set -uo pipefail
out=$(realpath -m "${1:-gpu-check}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_fused_linear_act.py tests/test_fused_linear_act_bench.py \
    2>&1 | tee "$out/tests.txt"
python3 scripts/bench_kernel.py "$out/bench_kernel.txt"
