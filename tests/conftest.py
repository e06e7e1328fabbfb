import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.config import DataConfig
from study.data import DEBIAN_DIR, IDX_FILES, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion():
    """Real FashionMNIST. Its absence is a failure, not a skip: CI installs it (scripts/install.sh)."""
    return load_fashion_mnist(DataConfig())


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the real IDX files, for tests that damage one."""
    for name in IDX_FILES:
        (tmp_path / f"{name}.gz").write_bytes((DEBIAN_DIR / f"{name}.gz").read_bytes())
    return tmp_path


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "study", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
