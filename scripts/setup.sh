#!/usr/bin/env bash
# The README's first command: install everything, then run the quick study end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== the quick study: lesson CNN, leak {0,.05,.1,.2,.5} x sub {0,.2,.4,.7,.9}, seeds 0,1,2, one epoch"
.venv/bin/python -m study search --workers auto  # one worker per CPU core
echo "== results: studies/quick.db (Optuna storage) and the pictures in studies/quick/"
echo "   browse the trials: .venv/bin/python -m study dashboard --name quick"
