"""The exception classes the command line turns into one line on stderr and an exit code."""


class BadInput(ValueError):
    """Input a user can fix: a flag out of range, a missing or damaged file, an unusable storage.

    The message is one sentence naming the problem and, where there is one, the fix. Exit code 2.
    """


class StorageFault(RuntimeError):
    """The storage failed while a study ran: the server stayed away past the retry bound, the disk
    filled, the database file was replaced or truncated. Everything stored before the fault is kept,
    and the message says how to continue (usually: the same command, once the cause is gone).
    Exit code 3.
    """
