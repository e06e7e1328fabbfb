"""Several worker processes on one study: `workers=W` on this machine, or `gpus=(0, 1)` (one per GPU).

Each worker is a process forked from multiprocessing's fork server (`study.fork_server`; spawned
where the platform has none). The server imports the workers' modules once, beside the command's
own imports and the study's preparation, and has run no torch operation (no CUDA state, no thread
pool of torch's to inherit): the workers need not each import torch again. A worker opens the
study and runs the same loop as an independent command started by hand on this or another machine
would. The configuration reaches it as dataclasses through a pipe, never on a command line, which
every user of the machine can read (`ps`). The same code serves the command line and the Python API.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import queue
import shutil
import threading
import time
from dataclasses import replace
from typing import Callable

import torch

from study import fork_server, interrupts
from study.config import RunConfig
from study.data import FashionMNIST, load_fashion_mnist
from study.design import MachineConfig
from study.errors import Interrupted, WorkerStopped

WATCH_SECONDS = 2  # how often the starting process looks at the study while its workers run
# In a worker: set by the starting process once any of its workers has found the study done; and
# whether a wait of this worker was cut short by it.
_study_done: multiprocessing.synchronize.Event | None = None
_told = False
# What a worker tells the starting process through its pipe: once it first waits with nothing to ask
# (its core is free), and once its work is done. In a worker: that pipe, and whether it said IDLE.
IDLE, DONE = "idle", "done"
_to_starter: multiprocessing.connection.Connection | None = None
_said_idle = False


def worker_runs(run: RunConfig, machine: MachineConfig, device_type: str) -> list[tuple[RunConfig, int]]:
    """Each worker's run configuration and CPU thread count: one per GPU on its own device, or
    `worker_count` on the run's device, sharing this machine's cores (W workers at all cores each
    would fight over them)."""
    if machine.gpus is not None:
        return [(replace(run, train=replace(run.train, device=f"cuda:{gpu}")), 1) for gpu in machine.gpus]
    count = machine.worker_count(device_type)
    threads = max(1, len(os.sched_getaffinity(0)) // count)
    return [(run, threads)] * count


def worker_data(run: RunConfig, machine: MachineConfig, device_type: str) -> FashionMNIST | None:
    """The data every CPU worker trains on, loaded once by the starting process and shared with them
    (a load of its own costs each worker a second of start-up). Loaded with a worker's thread count:
    the normalisation's float32 sums depend on it, and a worker's runs must be bitwise those it would
    train on data it loaded itself. None with GPUs (each GPU worker loads its own onto its device),
    and where /dev/shm has no room for it (a container's is 64 MB unless told): each worker loads its own."""
    if device_type != "cpu" or machine.gpus is not None:
        return None
    (_, threads), *_ = worker_runs(run, machine, device_type)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = load_fashion_mnist(run.data, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    size = sum(getattr(data, name).nbytes for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"))
    return data if _shared_memory_free() > 2 * size else None


def _shared_memory_free() -> float:
    """Bytes free where torch shares tensors between processes (/dev/shm on Linux); unbounded elsewhere."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return float("inf")


Prepare = Callable[[], tuple[tuple, Callable[[], None]]]


def run_workers(work: Callable[..., None], prepare: Prepare, run: RunConfig, machine: MachineConfig,
                device_type: str, when_a_core_is_free: Callable[[], None] = lambda: None) -> None:
    """Start the fork server importing `work`'s module (`work` is a module-level function:
    `study.runner.work_here`), call `prepare()` here meanwhile, then start every worker. `prepare`
    returns `work`'s first arguments (they must pickle) and what to call while waiting. Each worker
    calls `work(*arguments, its run configuration)`, and this waits for all, calling the latter every
    WATCH_SECONDS. Re-raises the first error a worker raised (BadInput, StorageFault); WorkerStopped
    when one ended otherwise (killed, crashed). If `prepare` raises, no worker has started.

    A stop request to this process (`study.interrupts`: Ctrl-C, SIGTERM) is passed on to the workers
    through an event; each drops its seed in flight, marks its trial FAIL and ends, and then this
    raises `Interrupted`, as does a worker that was itself asked to stop. A second request kills the
    workers at once: their RUNNING trials are failed as stale (`--grace-seconds`) by the next command.
    Any other way out of the wait (Python's own KeyboardInterrupt where no `stop_requests` block
    is open) asks the workers to stop and waits for them.

    `when_a_core_is_free` is called once, on a thread of this process, when a worker first has nothing
    to ask (`wait_for_others`) while another still trains: what the caller does next (importing its
    pictures' libraries, a second or two) takes the core that would idle at the study's end. Not
    once a stop was asked for. An error there is dropped: the caller meets it again where it needs
    the import. Joined before this returns or raises, unless stopping at once.

    Returns once every worker has said its work is done or has ended: the interpreter's teardown
    of a worker that is done overlaps what this process does next, and multiprocessing joins it at
    this process's exit (or its next start of a process).

    The fork server lives as long as this process and is started once: later calls fork workers from
    it with what it had then: the modules it imported (a notebook that reloads the project's code
    restarts its kernel to reach its workers), the libraries' settings read at import, its standard
    output and error. Each worker gets this process's environment variables as they are at the call.
    """
    context = fork_server.start(work.__module__)
    arguments, while_waiting = prepare()  # meanwhile the fork server imports torch and `work`'s module
    interrupts.check()
    errors, stop, study_done = context.Queue(), context.Event(), context.Event()
    runs = worker_runs(run, machine, device_type)
    hear, tell = zip(*(context.Pipe(duplex=False) for _ in runs))
    processes = [context.Process(target=_work, args=(work, arguments, worker_run, threads, dict(os.environ), errors,
                                                     stop, study_done, tell[index]), name=f"initstudy-worker-{index}")
                 for index, (worker_run, threads) in enumerate(runs)]
    done: set[int] = set()
    idle: set[int] = set()
    free_core = threading.Thread(target=_dropping_errors, args=(when_a_core_is_free,), daemon=True,
                                 name="initstudy-when-a-core-is-free")
    try:
        # A spawned worker inherits this block (a fork server's, the server's, blocked at its start): a
        # signal during its start-up waits for its handler. A fork waits for the server's imports.
        with interrupts.blocked():
            for process in processes:
                process.start()
        for end in tell:
            end.close()  # the workers' ends: a worker's is closed, at the latest, when it ends
        with interrupts.wakeup() as signalled:  # a request is passed on at once, not after the wait
            while waiting := [i for i, p in enumerate(processes) if i not in done and p.is_alive()]:
                if interrupts.requested() is not None:
                    stop.set()
                if interrupts.repeated():  # the at-once exception was swallowed where it landed
                    raise Interrupted(interrupts.requested(), at_once=True)
                listened = [hear[i] for i in waiting if not hear[i].closed]
                woken_by = [signalled] if signalled is not None else []
                ready = multiprocessing.connection.wait(
                    [*(processes[i].sentinel for i in waiting), *listened, *woken_by], timeout=WATCH_SECONDS)
                for i in waiting:
                    said = _heard(hear[i]) if hear[i] in ready else None
                    (done if said == DONE else idle if said == IDLE else set()).add(i)
                if done:  # a worker returns only once the study is done: the others need not wait to see it
                    study_done.set()
                if (free_core.ident is None and idle | done and interrupts.requested() is None
                        and any(processes[i].is_alive() for i in waiting if i not in idle | done)):
                    with contextlib.suppress(RuntimeError):  # no thread to be had: the caller imports later
                        free_core.start()
                interrupts.drain(signalled)
                if interrupts.requested() is None:
                    # Watching must not stop a study the workers carry on; a request that lands while the
                    # watcher waits for the storage is passed on at the top of the loop.
                    with contextlib.suppress(Exception, Interrupted):
                        while_waiting()
    except BaseException as e:
        stop.set()
        for process in filter(lambda process: process.pid is not None, processes):  # those started
            if getattr(e, "at_once", False):
                process.kill()
            process.join()
        if free_core.ident is not None and not getattr(e, "at_once", False):
            free_core.join()  # as below; and a daemon thread cut at the interpreter's exit may not be
        raise
    finally:
        for end in (*hear, *tell):
            end.close()
    if free_core.ident is not None:
        free_core.join()  # its imports and the caller's would otherwise race for the modules' locks
    interrupts.check()
    codes = [p.exitcode for p in processes if p.exitcode]
    with contextlib.suppress(queue.Empty):
        if any(code - 128 not in interrupts.SIGNALS for code in codes):
            raise errors.get(timeout=1)  # a failed worker put its error first: flushed before its exit
    stopped = next((code - 128 for code in codes if code - 128 in interrupts.SIGNALS), None)
    if stopped is not None:
        raise Interrupted(stopped)
    if codes:
        raise WorkerStopped(codes[0])


def wait_for_others(seconds: float) -> bool:
    """Wait `seconds` while other workers hold the trials left, or less in a worker of `run_workers`:
    until the starting process says that another of its workers found the study done, which the
    caller's next look at the study then finds too. Once only, so that a worker that saw the study
    done too early (an edge's next probe was queued after its look) cannot make the others' waits
    spin. Whether this wait was cut short. A worker's first wait tells the starting process that its
    core is free."""
    global _told, _said_idle
    if _to_starter is not None and not _said_idle:
        _said_idle = True
        with contextlib.suppress(OSError):  # the starting process was killed: no one to tell
            _to_starter.send(IDLE)
    if _study_done is None or _told:
        time.sleep(seconds)
        return False
    _told = _study_done.wait(seconds)
    return _told


def _dropping_errors(call: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        call()


def _heard(end: multiprocessing.connection.Connection) -> str | None:
    """What a worker's pipe, found readable, brought (IDLE or DONE); None at its end (the worker ended
    without saying DONE: its exit code tells how), which is closed, not listened to again."""
    try:
        return end.recv()
    except EOFError:
        end.close()
        return None


def _work(work: Callable[..., None], arguments: tuple, run: RunConfig, threads: int, environment: dict[str, str],
          errors: multiprocessing.Queue, stop: multiprocessing.synchronize.Event,
          study_done: multiprocessing.synchronize.Event, done: multiprocessing.connection.Connection) -> None:
    """One worker: `work(*arguments, run)` on this process, in the starting process's `environment`,
    until the study is done or `stop` is set; then `done`, its pipe to the starting process, says
    DONE before the interpreter's teardown (`wait_for_others` says IDLE through it first).

    Started with SIGINT and SIGTERM blocked (`fork_server.start`); they are let through while recorded
    as requests, and held back again on the way out. Never stopped at once by a repeated signal:
    that is its parent's decision."""
    try:
        with interrupts.stop_requests(escalate=False, parent=stop):
            interrupts.unblock()
            try:
                from study.masking import guard_output

                os.environ.clear()  # the fork server's dates from its start, maybe an earlier study's
                os.environ.update(environment)
                global _study_done, _to_starter
                _study_done, _to_starter = study_done, done
                guard_output()
                torch.set_num_threads(threads)
                interrupts.check()
                work(*arguments, run)
            finally:
                interrupts.block()  # a late Ctrl-C must not raise in the process's teardown
        done.send(DONE)
    except Interrupted as e:
        raise SystemExit(e.exit_code) from None
    except Exception as e:
        errors.put(e)
        raise SystemExit(1) from None
    finally:
        # Nothing the study needs is left to the garbage collector (the storage is closed at exit,
        # `study.storage`); the interpreter's teardown collected torch's objects several times over,
        # a second per worker (measured), which a stop or the end of a study waited for.
        gc.freeze()
        # A forked process ends without running the exit handlers (multiprocessing ends it with
        # `os._exit`): they run here, as at a spawned worker's exit, and are not run again there. The
        # storage's closes SQLite's connections, which checkpoints its WAL (`study.storage`).
        atexit._run_exitfuncs()
