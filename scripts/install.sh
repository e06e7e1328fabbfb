#!/usr/bin/env bash
# Creates .venv with the project and its test set-up, and makes FashionMNIST available.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "initstudy needs Python 3.11 (found $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
fi

stamp=.venv/.installed-from
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "== installing the project into .venv (torch is large: a few minutes the first time)"
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    echo "$wanted" > "$stamp"
fi

debian_dir=/usr/share/datasets/fashion-mnist
if [ ! -e "$debian_dir/train-images-idx3-ubyte.gz" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if command -v apt-get >/dev/null && $sudo true 2>/dev/null; then
        echo "== installing FashionMNIST (Debian package dataset-fashion-mnist)"
        $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "== no apt: FashionMNIST will be downloaded by torchvision on first use (or pass --data-dir)"
    fi
fi
