"""Run `python -m study ARGS` so that the process that stores the study's first seed, the command or one
of its workers, sends a signal at that moment and goes on only once its own stop was requested: the
test's way to stop a study with workers right after a seed, however fast the others train (they
cannot finish the study while this one holds its trial). The command passes a stop on to its workers
only as the signal wakes it: its periodic look at them is an hour apart here.

    python tests/signalling.py --signal SIGTERM --to command --once PATH -- ARGS   # or, in a test:
    subprocess.Popen([*signalling(signal.SIGTERM, "command", path), *ARGS], ...)

--to command: the signal goes to the command's process (a service manager's or a container's stop);
--to group: to its whole process group (a terminal's Ctrl-C). --once: a file that does not exist yet,
made by the first seed to be stored, so that one process signals once.

The hook is installed by this file's top level, which multiprocessing's workers run again (as
`__mp_main__`, with the command's `sys.argv`), so it is in every process of the command.
"""

import argparse
import functools
import os
import signal
import sys
import time
from pathlib import Path

import study.workers
from study import interrupts
from study.runner import Search

STOP_WAIT_SECONDS = 120  # ample: a stop reaches a worker within milliseconds
COMMAND_PID = "SIGNALLING_COMMAND_PID"  # set by the command, inherited by its workers


def signal_after_first_seed(signum: int, to: str, once: str) -> None:
    original = Search._store_seed

    @functools.wraps(original)
    def store_seed(*args, **kwargs):
        stored = original(*args, **kwargs)
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return stored  # another seed was first
        if to == "group":
            os.killpg(os.getpgid(0), signum)
        else:  # a worker's parent is the fork server; the command named itself in the environment
            os.kill(int(os.environ[COMMAND_PID]), signum)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while interrupts.requested() is None:  # the request is the event waited on; the sleep only paces the look
            if time.monotonic() > deadline:
                raise RuntimeError(f"no stop request within {STOP_WAIT_SECONDS} s of the signal")
            time.sleep(0.01)
        return stored

    Search._store_seed = store_seed


def signalling(signum: signal.Signals, to: str, once: Path) -> list[str]:
    """The command line up to the command's own arguments."""
    return [sys.executable, __file__, "--signal", signum.name, "--to", to, "--once", str(once), "--"]


def own_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signal", type=lambda name: signal.Signals[name], required=True)
    parser.add_argument("--to", choices=("command", "group"), required=True)
    parser.add_argument("--once", required=True)
    split = argv.index("--")
    return parser.parse_args(argv[1:split]), argv[split + 1:]


if __name__ in ("__main__", "__mp_main__"):  # the command, its workers; not a test importing `signalling`
    own, rest = own_arguments(sys.argv)
    signal_after_first_seed(own.signal, own.to, own.once)
    # The command looks at its workers' study only when something happens: a stop passed on at its
    # next look instead of at once would hang the test (and fail it at its timeout).
    study.workers.WATCH_SECONDS = 3600

if __name__ == "__main__":
    from study.cli import main

    os.environ[COMMAND_PID] = str(os.getpid())

    sys.exit(main(rest))
