"""The exception classes the command line turns into one line on stderr and an exit code."""

import signal


class BadInput(ValueError):
    """Input a user can fix: a flag out of range, a missing or damaged file, an unusable storage.

    The message is one sentence naming the problem and, where there is one, the fix. A setting the
    user can change is named as its field in backticks (`data_dir`): so the Python face shows it,
    and the command line as its flag (--data-dir). Exit code 2.
    """


class FieldError(BadInput):
    """A bad value of one configuration field. The message names the field (`leak must be in [0, 1)`);
    the command line names its flag instead (`--leak must be in [0, 1)`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem

    def __reduce__(self):  # raised in a worker process, re-raised in the one that started it
        return type(self), (self.field, self.problem)


class StorageFault(RuntimeError):
    """The storage failed while a study ran: the server stayed away past the retry bound, the disk
    filled, the database file was replaced or truncated. Everything stored before the fault is kept,
    and the message says how to continue (usually: the same command, once the cause is gone).
    Exit code 3.
    """


class WorkerStopped(RuntimeError):
    """A worker process ended without finishing or raising (killed, crashed). What it stored is kept;
    the same command continues the study."""

    def __init__(self, exit_code: int):
        super().__init__(f"a worker stopped with exit code {exit_code}; run the same command again to continue")
        self.exit_code = exit_code

    def __reduce__(self):
        return type(self), (self.exit_code,)


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (Ctrl-C: SIGINT, or SIGTERM from a service manager or a batch
    system) and stopped at a safe point (`study.interrupts`): the seed in flight is dropped, its
    trial marked FAIL and retried on resume, finished seeds kept. A KeyboardInterrupt, so a notebook
    shows it as its own interrupt. Exit code 128 + the signal's number: 130 or 143.

    at_once: raised by a repeated signal wherever the program was, not at a safe point.
    """

    def __init__(self, signum: int, at_once: bool = False):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.at_once = signum, at_once

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):
        return type(self), (self.signum, self.at_once)
