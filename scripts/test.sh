#!/usr/bin/env bash
# The README's second command: install the test set-up if missing, then run every test (slow ones too).
# `--fast`: every test not marked slow (a test that takes over ~10 s on the 2-core machine is marked
# `@pytest.mark.slow`), under 3 minutes there, for use while developing; CI runs everything.
set -euo pipefail
fast=()
if [ "${1:-}" = "--fast" ]; then
    shift
    fast=(-m "not slow")
fi
cd "$(dirname "$0")/.."
bash scripts/install.sh

# Debian packages the tests use: Chromium (a screenshot of the dashboard), PostgreSQL (a real server
# for the many-machines tests; each starts and stops its own instance) and libfaketime (a machine
# whose clock is an hour off).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "== installing ${missing[*]} for the tests"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec .venv/bin/python -m pytest "${fast[@]}" "$@"
