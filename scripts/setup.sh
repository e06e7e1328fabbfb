#!/usr/bin/env bash
# The README's first command: install everything, then run the quick study end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== one training run: the lesson CNN with GeneralRelu(.1, .4), seed 0, one epoch"
mkdir -p studies
.venv/bin/python -m study train --model cnn --leak 0.1 --sub 0.4 --seed 0 --epochs 1 | tee studies/first-run.txt
echo "== result saved in studies/first-run.txt"
