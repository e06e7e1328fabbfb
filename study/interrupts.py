"""Ctrl-C and SIGTERM as requests to stop, honoured at safe points instead of wherever they land.

Python's own SIGINT handler raises KeyboardInterrupt in whatever the main thread runs at that
moment; inside a weakref callback or a `__del__` it is printed and dropped, and the study runs on.
Here the faces (`study.cli.main`, the `study.api` calls, each worker process) install, for the
length of one command or call, a handler that only records the request; the loops below call
`check()` where stopping loses nothing but the work in flight (`training.training_steps` before
each step, the study's loop between trials, `plots.save_figures` between pictures, a storage
retry before it waits), and `check()` raises `Interrupted` there. A second signal raises at once, as Python's
own handler would; the recorded request still stops the command at the next safe point should
that exception be swallowed. When the call returns the previous handlers are back, so a
notebook's interrupt button behaves as before between calls.

A worker process started by `study.workers` is stopped by its parent through an event
(`stop_requests(parent=...)`), not by a forwarded signal: a terminal's Ctrl-C reaches the whole
process group already, and a forwarded copy would count as the second, stop-at-once signal. A
block that only waits and has nothing to lose (the dashboard's server) asks for `at_once()`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Protocol

from study.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Flag(Protocol):  # multiprocessing.Event, threading.Event
    def is_set(self) -> bool: ...


class _Requests:
    """What the handler of the current `stop_requests` block recorded (handlers are process-wide)."""

    def __init__(self, installed: bool = False, escalate: bool = True, parent: _Flag | None = None) -> None:
        self.installed, self.escalate, self.parent = installed, escalate, parent
        self.signals: list[int] = []  # in arrival order
        self.at_once = False  # inside `at_once()`

    def first(self) -> int | None:
        if self.signals:
            return self.signals[0]
        if self.parent is not None and self.parent.is_set():
            return signal.SIGTERM  # the parent asked: as a service manager's stop would
        return None


_requests = _Requests()


def _record(signum: int, frame) -> None:
    _requests.signals.append(signum)
    if _requests.at_once or (_requests.escalate and len(_requests.signals) > 1):
        raise Interrupted(_requests.signals[0], at_once=True)


@contextlib.contextmanager
def stop_requests(escalate: bool = True, parent: _Flag | None = None) -> Iterator[None]:
    """Record SIGINT and SIGTERM for the length of the block, then restore the handlers found.

    escalate: a second signal raises `Interrupted` at once (a person pressing Ctrl-C again). A
        worker passes False: its parent decides when to stop it at once.
    parent: an event the parent sets to ask this process to stop, checked by `check()`.

    On leaving the block normally with a request recorded (one that arrived after the last safe
    point), raises `Interrupted`: the command or call still ends as interrupted. Outside the main
    thread (signal handlers can only be set there) and inside another such block it changes
    nothing. A signal found ignored (SIG_IGN: a background job, nohup) stays ignored.
    """
    global _requests
    if _requests.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _requests = _Requests(installed=True, escalate=escalate, parent=parent)
    try:
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, _record)
        yield
        check()
    finally:
        # Held back while the state and handlers change: a signal that lands now goes, once they are
        # back, to the handler found (a notebook's interrupt), never half way between the two.
        with blocked():
            _requests = _Requests()
            for signum, handler in previous.items():
                # None: a handler not set from Python; the default is what the process had before Python's.
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def at_once() -> Iterator[None]:
    """For a block with no safe point, which only waits and holds nothing a stop could lose (a
    server): a request raises `Interrupted` at once, where the block is."""
    check()
    _requests.at_once = True
    try:
        yield
    finally:
        with blocked():
            _requests.at_once = False


def check() -> None:
    """At a safe point: raise `Interrupted` if a stop was requested, else return at once."""
    signum = _requests.first()
    if signum is not None:
        raise Interrupted(signum)


def requested() -> int | None:
    """The signal that first asked this process to stop (SIGTERM for its parent's request), or None."""
    return _requests.first()


def repeated() -> bool:
    """Whether a second signal arrived: the caller should stop what it waits for at once."""
    return len(_requests.signals) > 1


@contextlib.contextmanager
def wakeup() -> Iterator[int | None]:
    """A file descriptor that turns readable when SIGINT or SIGTERM arrives, for a block that waits on
    other things (`multiprocessing.connection.wait`): Python retries an interrupted wait, so a request
    would otherwise be seen only when the wait times out. Read it empty with `drain`. None outside the
    main thread, where no handler runs."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    readable, writable = os.pipe()
    os.set_blocking(writable, False)  # the interpreter writes to it from its signal handling
    os.set_blocking(readable, False)
    try:
        previous = signal.set_wakeup_fd(writable, warn_on_full_buffer=False)
        try:
            yield readable
        finally:
            signal.set_wakeup_fd(previous)
    finally:
        os.close(readable)
        os.close(writable)


def drain(wakeup_fd: int | None) -> None:
    """Read a `wakeup()` descriptor empty, so it is readable again only after the next signal."""
    if wakeup_fd is not None:
        with contextlib.suppress(BlockingIOError):
            while os.read(wakeup_fd, 512):
                pass


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (pending, not lost) for the block: a process started inside it
    inherits them blocked and receives any that arrive during its start-up once it has installed
    its own handler (`stop_requests` in the worker, then `unblock()`)."""
    old = block()
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def block() -> set:
    """Hold SIGINT and SIGTERM back from this thread until unblocked; the mask before."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def unblock() -> None:
    """Let SIGINT and SIGTERM through to this thread."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
