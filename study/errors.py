"""The exception classes the command line turns into one line on stderr and an exit code."""


class BadInput(ValueError):
    """Input a user can fix: a flag out of range, a missing or damaged file, an unusable storage.

    The message is one sentence naming the problem and, where there is one, the fix. Exit code 2.
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
