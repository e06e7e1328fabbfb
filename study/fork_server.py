"""The fork server that `study.workers` forks its workers from: started early, ended fast.

multiprocessing's fork server is a fresh interpreter that imports the workers' module (torch,
Optuna, the project) once; each worker is a fork of it. `start(module)` starts it at once, without
waiting for its imports, so that a command can start it before its own imports and let both run on
two cores. When this process exits, once its workers have, the server is killed: its own interpreter
teardown took a core for about a second after the command ended, and held the command's output
open that long; it keeps nothing.
Light to import (no torch): a command's first steps import it.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import sys
from typing import Iterator

from study import interrupts

WORKERS_MODULE = "study.runner"  # what a study's workers run (`study.runner.work_here`)


def start(module: str = WORKERS_MODULE) -> multiprocessing.context.BaseContext:
    """The context that starts the workers: the fork server's, which is started here (at once, not
    waiting for it) to import `module` unless it runs already (it keeps what it imported then; one
    that died is started again); spawn's where the platform has none. Started with SIGINT and
    SIGTERM held back, which every process it forks inherits."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([module])
    # The server is a fresh interpreter that ignores the `sys.path` multiprocessing hands it (3.11-3.13)
    # and would look first in its working directory: it gets exactly this process's, or it could
    # import another copy of the code than this process runs.
    path = os.pathsep.join(entry or os.getcwd() for entry in sys.path if isinstance(entry, str))
    with _environment(PYTHONPATH=path, PYTHONSAFEPATH="1"), interrupts.blocked():
        # Started first, as the server's start would, because it lets SIGINT and SIGTERM through
        # again on its way out (Python 3.11) and the server would then start without them blocked.
        multiprocessing.resource_tracker.ensure_running()
        interrupts.block()
        multiprocessing.forkserver.ensure_running()
    atexit.unregister(_end)  # once, however often the server is asked for
    atexit.register(_end)  # after multiprocessing's own exit handler, so it runs before it
    return context


def _end() -> None:
    """Wait for this process's workers to end (their own exit closes the storage and checkpoints its
    WAL), then kill the server instead of letting it tear torch down, and let multiprocessing forget
    it (its own stop closes the "alive" pipe, reaps the process and removes its socket)."""
    pid = _server_pid()
    if pid is None:
        return
    for child in multiprocessing.active_children():
        child.join()
    with contextlib.suppress(OSError):  # gone already
        os.kill(pid, signal.SIGKILL)
    multiprocessing.forkserver._forkserver._stop()


def _server_pid() -> int | None:
    """The running fork server's process id (multiprocessing's own record of it), or None."""
    return getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """These environment variables set for the block (for the processes it starts), then as they were."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
