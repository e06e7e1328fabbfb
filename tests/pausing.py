"""Run `python -m study ARGS` with a pause injected before the Nth call of some functions: the test's
way to stop a command at an exact point (between two storage calls, before a first heartbeat, after
a trial's second seed) and kill it there, or let it go on.

    python tests/pausing.py --at N --calls study.faults:ResilientStorage.create_new_study,... -- ARGS

Before the Nth call (counted over all the named functions together) it prints `PAUSE_MARK name` on
stderr and waits for a line on stdin; a command that ends without reaching the Nth call pauses
nowhere. The tests wait for the mark (an event, not a sleep) and then kill or release the command.
"""

import argparse
import functools
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAUSE_MARK = "initstudy-test-paused-before"
ROOT = Path(__file__).resolve().parents[1]


class PausedCommand:
    """`python -m study ARGS` started in its own process group (a machine's process tree) with a pause
    before the `at`th call of `calls`; `env` adds to the environment (LD_PRELOAD for libfaketime)."""

    def __init__(self, at: int, calls: list[str], args: list[str], cwd: Path, env: dict | None = None):
        self.stdout = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--at", str(at), "--calls", ",".join(calls), "--", *args], cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdin=subprocess.PIPE, stdout=self.stdout,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stderr_lines: list[str] = []
        self.paused = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if line.startswith(PAUSE_MARK):
                self.paused.set()

    def wait_paused(self, timeout: float = 180) -> bool:
        """True once the command is paused; False when it ended without pausing."""
        deadline = time.monotonic() + timeout
        while not self.paused.wait(0.1):
            if self.proc.poll() is not None:
                self._reader.join(10)
                return self.paused.is_set()
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"no pause within {timeout} s: {''.join(self.stderr_lines)[-2000:]}")
        return True

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL to the whole process tree, as a machine that dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """The exit code, stdout and stderr once the command ends."""
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        self.stdout.seek(0)
        return rc, self.stdout.read(), "".join(self.stderr_lines)


def pause_before(at: int, targets: list[str]) -> None:
    calls, lock = [0], threading.Lock()
    for target in targets:
        module_name, _, path = target.partition(":")
        owner = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def paused(*args, _original=original, _name=path, **kwargs):
            with lock:
                calls[0] += 1
                here = calls[0] == at
            if here:
                print(f"{PAUSE_MARK} {_name}", file=sys.stderr, flush=True)
                sys.stdin.readline()
            return _original(*args, **kwargs)

        setattr(owner, name, functools.wraps(original)(paused))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", type=int, required=True)
    parser.add_argument("--calls", required=True)
    own, rest = parser.parse_args(sys.argv[1:sys.argv.index("--")]), sys.argv[sys.argv.index("--") + 1:]
    pause_before(own.at, own.calls.split(","))
    from study.cli import main

    sys.exit(main(rest))
