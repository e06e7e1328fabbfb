#!/usr/bin/env bash
# The README's second command: install the test set-up if missing, then run every test (slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
