#!/usr/bin/env bash
# The README's second command: install the test set-up if missing, then run every test (slow ones too).
# `--fast`: the unit-level modules only (no training to accuracy, no servers), a few minutes on 2 cores,
# for use while developing; CI runs everything.
set -euo pipefail
fast=()
if [ "${1:-}" = "--fast" ]; then
    shift
    fast=(-m "not slow" tests/test_config.py tests/test_stats.py tests/test_model.py tests/test_data.py
          tests/test_findings.py tests/test_packaging.py tests/test_fused_linear_act.py tests/test_stored_studies.py
          tests/test_runner.py tests/test_reliability.py tests/test_sequential.py tests/test_ladder.py
          tests/test_edge.py tests/test_plots.py tests/test_sharpness.py tests/test_signal.py tests/test_interrupts.py)
fi
cd "$(dirname "$0")/.."
bash scripts/install.sh

# Debian packages the tests use: Chromium (a screenshot of the dashboard) and PostgreSQL (a real
# server for the many-machines storage test; the test starts and stops its own instance).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "== installing ${missing[*]} for the tests"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec .venv/bin/python -m pytest "${fast[@]}" "$@"
