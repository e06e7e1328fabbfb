#!/usr/bin/env bash
# The README's second command: install the test set-up if missing, then run every test (slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The dashboard test takes a screenshot in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "== installing chromium for the dashboard test"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
