"""Several worker processes on one study: `workers=W` on this machine, or `gpus=(0, 1)` (one per GPU).

Each worker is a fresh Python process (multiprocessing's spawn: no CUDA or thread state is
inherited) that opens the study and runs the same loop as an independent command started by hand
on this or another machine would. The configuration reaches it as dataclasses through a pipe, never
on a command line, which every user of the machine can read (`ps`). The same code serves the
command line and the Python API.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
from dataclasses import replace
from typing import Callable

from study.config import RunConfig
from study.design import MachineConfig, StudyDesign, StudyPlace
from study.errors import WorkerStopped

WATCH_SECONDS = 2  # how often the starting process looks at the study while its workers run


def worker_runs(run: RunConfig, machine: MachineConfig, device_type: str) -> list[tuple[RunConfig, int]]:
    """Each worker's run configuration and CPU thread count: one per GPU on its own device, or
    `worker_count` on the run's device, sharing this machine's cores (W workers at all cores each
    would fight over them)."""
    if machine.gpus is not None:
        return [(replace(run, train=replace(run.train, device=f"cuda:{gpu}")), 1) for gpu in machine.gpus]
    count = machine.worker_count(device_type)
    threads = max(1, len(os.sched_getaffinity(0)) // count)
    return [(run, threads)] * count


def run_workers(place: StudyPlace, design: StudyDesign, run: RunConfig, machine: MachineConfig,
                device_type: str, while_waiting: Callable[[], None] = lambda: None) -> None:
    """Start every worker, wait for all, calling `while_waiting()` every WATCH_SECONDS meanwhile.
    Re-raises the first error a worker raised (BadInput, StorageFault); WorkerStopped when one
    ended otherwise (killed, crashed).

    Ctrl-C reaches the workers too (same process group): each marks its running trial FAIL and stops.
    """
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = [context.Process(target=_work, args=(place, design, worker_run, machine, threads, errors),
                                 name=f"initstudy-worker-{index}")
                 for index, (worker_run, threads) in enumerate(worker_runs(run, machine, device_type))]
    for process in processes:
        process.start()
    try:
        while alive := [p.sentinel for p in processes if p.is_alive()]:
            multiprocessing.connection.wait(alive, timeout=WATCH_SECONDS)
            with contextlib.suppress(Exception):  # watching must not stop a study the workers carry on
                while_waiting()
    except KeyboardInterrupt:
        for process in processes:
            process.join()
        raise
    try:
        raise errors.get(timeout=1)
    except queue.Empty:
        pass
    code = next((p.exitcode for p in processes if p.exitcode), 0)
    if code:
        raise WorkerStopped(code)


def _work(place: StudyPlace, design: StudyDesign, run: RunConfig, machine: MachineConfig, threads: int,
          errors: multiprocessing.Queue) -> None:
    """One worker: the study's loop on this process until the study is done."""
    import torch

    from study.masking import guard_output
    from study.runner import open_search

    guard_output()
    torch.set_num_threads(threads)
    try:
        open_search(place, design, run, machine, progress=False).work()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        errors.put(e)
        raise SystemExit(1) from None
