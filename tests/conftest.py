import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before triton
# is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


def sigint_as_in_a_terminal() -> None:
    """A child's preexec_fn: SIGINT handled as a terminal's Ctrl-C is, also where the test runner was
    started with SIGINT ignored (a background job of a non-interactive shell, nohup): a child
    inherits the ignoring, and a program that finds SIGINT ignored rightly leaves it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "study", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert proc.stdout == ""


# A study small enough for process-level tests: a 16-unit MLP, one epoch, statistics every 10 steps.
TINY = ["--model", "mlp", "--widths", "16", "--lr", "0.05", "--stats-every", "10"]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
