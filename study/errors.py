"""The one exception class the command line turns into a one-line message and exit code 2."""


class BadInput(ValueError):
    """Input a user can fix: a flag out of range, a missing or damaged file, an unusable storage.

    The message is one sentence naming the problem and, where there is one, the fix.
    """
