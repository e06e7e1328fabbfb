"""Several worker processes on one study: `--workers W` on this machine, or `--gpus 0,1` (one per GPU).

Each worker is the same `search` command run as a plain worker (`--worker`), so workers started
here behave exactly like independent commands started by hand on this or another machine. The
storage URL reaches them in the environment, not on their command lines, which every user of the
machine can read (`ps`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

from study.config import STORAGE_ENV, SearchConfig

WORKER_FLAG = "--worker"


def worker_commands(argv: Sequence[str], search: SearchConfig, device_type: str = "cpu") -> list[list[str]]:
    """The command of each worker. argv: the `search` arguments as the user gave them.

    Later flags override earlier ones in argparse, so a worker's own settings are appended.
    """
    base = [sys.executable, "-m", "study", "search", *without_storage(argv), WORKER_FLAG]
    if search.gpus is not None:
        return [[*base, "--device", f"cuda:{gpu}"] for gpu in search.gpu_list()]
    count = search.worker_count(device_type)
    # Each worker is told the count, so that it takes its share of the cores (`--workers auto` would
    # count them again, and a worker must not start workers of its own).
    return [[*base, "--workers", str(count)] for _ in range(count)]


def without_storage(argv: Sequence[str]) -> list[str]:
    """argv without its --storage flags (`--storage URL` and `--storage=URL`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--storage":
            skip = True
        elif not arg.startswith("--storage="):
            kept.append(arg)
    return kept


def run_workers(commands: list[list[str]], storage_url: str) -> int:
    """Start every worker on `storage_url`, wait for all; the first non-zero exit code, else 0.

    Ctrl-C reaches the workers too (same process group): each marks its running trial FAIL and stops.
    """
    env = {**os.environ, STORAGE_ENV: storage_url}
    processes = [subprocess.Popen(command, env=env) for command in commands]
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            p.wait()
        raise
    return next((code for code in codes if code != 0), 0)
